//! `docs/openapi.json` from the types of this crate: the request and answer schemas of
//! every hyperd route, and the components they refer to, are generated here; the paths'
//! summaries and parameters are written by hand in the committed file. A test checks the
//! committed file is what [`document`] makes of it (`HYPERD_BLESS=1 cargo test -p
//! hyperd-api` rewrites it).
use schemars::generate::SchemaSettings;
use serde_json::{json, Map, Value};

/// Every type of hyperd's API by name, as OpenAPI 3.0 schemas.
pub fn schemas() -> Map<String, Value> {
    let mut generator = SchemaSettings::openapi3().into_generator();
    macro_rules! add {
        ($($t:ty),* $(,)?) => { $( generator.subschema_for::<$t>(); )* };
    }
    add!(
        crate::spec::PodSpec,
        crate::spec::ContainerSpec,
        crate::IdReply,
        crate::error::ErrorBody,
        crate::pods::PodReply,
        crate::pods::PodInfo,
        crate::pods::ListReply,
        crate::pods::ExitCodeReply,
        crate::pods::LabelsReply,
        crate::pods::PodStats,
        crate::pods::PublishedPort,
        crate::spec::PortList,
        crate::containers::ContainerInfo,
        crate::containers::ContainerCreated,
        crate::containers::Renamed,
        crate::containers::CommitConfig,
        crate::containers::ExecCreate,
        crate::images::ImagesList,
        crate::images::ImageNamed,
        crate::images::AuthReply,
        crate::images::Login,
        crate::images::Progress,
        crate::images::Removed,
        crate::system::Version,
        crate::system::Info,
    );
    let mut defs = generator.take_definitions(true);
    defs.sort_keys();
    defs
}

/// What a route answers with 200: a schema by name, an array of one, or a stream of
/// JSON lines of one.
enum Answer {
    One(&'static str),
    ArrayOf(&'static str),
    Lines(&'static str),
}

/// The routes whose bodies are typed: path, method, request schema, answer.
const ROUTES: &[(&str, &str, Option<&str>, Answer)] = &[
    ("/version", "get", None, Answer::One("Version")),
    ("/info", "get", None, Answer::One("Info")),
    (
        "/pod/create",
        "post",
        Some("PodSpec"),
        Answer::One("PodReply"),
    ),
    ("/pod/start", "post", None, Answer::One("PodReply")),
    ("/pod/stop", "post", None, Answer::One("PodReply")),
    ("/pod/kill", "post", None, Answer::One("PodReply")),
    ("/pod/pause", "post", None, Answer::One("PodReply")),
    ("/pod/unpause", "post", None, Answer::One("PodReply")),
    ("/pod", "delete", None, Answer::One("PodReply")),
    ("/pod/labels", "post", None, Answer::One("LabelsReply")),
    ("/pod/info", "get", None, Answer::One("PodInfo")),
    ("/pod/stats", "get", None, Answer::One("PodStats")),
    (
        "/pod/portmappings",
        "get",
        None,
        Answer::ArrayOf("PublishedPort"),
    ),
    (
        "/pod/{id}/portmappings",
        "get",
        None,
        Answer::ArrayOf("PublishedPort"),
    ),
    (
        "/pod/{id}/portmappings/add",
        "put",
        Some("PortList"),
        Answer::ArrayOf("PublishedPort"),
    ),
    (
        "/pod/{id}/portmappings/delete",
        "put",
        Some("PortList"),
        Answer::ArrayOf("PublishedPort"),
    ),
    ("/list", "get", None, Answer::One("ListReply")),
    ("/container/info", "get", None, Answer::One("ContainerInfo")),
    (
        "/container/create",
        "post",
        Some("ContainerSpec"),
        Answer::One("ContainerCreated"),
    ),
    ("/container/start", "post", None, Answer::One("IdReply")),
    ("/container/stop", "post", None, Answer::One("IdReply")),
    ("/container/remove", "post", None, Answer::One("IdReply")),
    ("/container/kill", "post", None, Answer::One("IdReply")),
    ("/container/rename", "post", None, Answer::One("Renamed")),
    (
        "/container/commit",
        "post",
        Some("CommitConfig"),
        Answer::One("IdReply"),
    ),
    ("/vm/create", "post", None, Answer::One("IdReply")),
    ("/vm", "delete", None, Answer::One("IdReply")),
    (
        "/exec/create",
        "post",
        Some("ExecCreate"),
        Answer::One("IdReply"),
    ),
    ("/exitcode", "get", None, Answer::One("ExitCodeReply")),
    ("/image/create", "post", None, Answer::Lines("Progress")),
    ("/image/build", "post", None, Answer::Lines("Progress")),
    ("/image/tag", "post", None, Answer::One("ImageNamed")),
    ("/image/push", "post", None, Answer::Lines("Progress")),
    ("/image/load", "post", None, Answer::Lines("Progress")),
    ("/images/get", "get", None, Answer::One("ImagesList")),
    ("/image", "delete", None, Answer::ArrayOf("Removed")),
    ("/auth", "post", Some("Login"), Answer::One("AuthReply")),
    ("/auth", "delete", None, Answer::One("AuthReply")),
];

fn reference(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

/// The committed document `base` with every generated part replaced: the component
/// schemas, the error answer, and the typed routes' request and answer schemas.
pub fn document(mut base: Value) -> Value {
    base["components"]["schemas"] = Value::Object(schemas());
    base["components"]["responses"]["Error"] = json!({
        "description": "Error",
        "content": { "application/json": { "schema": reference("ErrorBody") } },
    });
    for (path, method, request, answer) in ROUTES {
        let op = &mut base["paths"][*path][*method];
        if let Some(req) = request {
            op["requestBody"]["content"]["application/json"]["schema"] = reference(req);
        }
        let (schema, note) = match answer {
            Answer::One(n) => (reference(n), None),
            Answer::ArrayOf(n) => (json!({ "type": "array", "items": reference(n) }), None),
            Answer::Lines(n) => (reference(n), Some("one JSON object per line")),
        };
        let ok = &mut op["responses"]["200"];
        if ok["description"].is_null() {
            ok["description"] = json!("Success");
        }
        ok["content"]["application/json"]["schema"] = schema;
        if let Some(note) = note {
            ok["content"]["application/json"]["x-stream"] = json!(note);
        }
    }
    base
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_typed_route_is_documented_and_every_reference_resolves() {
        let committed =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json");
        let text = std::fs::read_to_string(&committed).unwrap();
        let doc: Value = serde_json::from_str(&text).unwrap();
        for (path, method, _, _) in ROUTES {
            assert!(
                doc["paths"][*path][*method].is_object(),
                "{method} {path} is missing from docs/openapi.json"
            );
        }
        let generated = document(doc.clone());
        let names = generated["components"]["schemas"]
            .as_object()
            .unwrap()
            .clone();
        let mut refs = Vec::new();
        fn walk(v: &Value, out: &mut Vec<String>) {
            match v {
                Value::Object(m) => {
                    if let Some(Value::String(r)) = m.get("$ref") {
                        out.push(r.clone());
                    }
                    m.values().for_each(|x| walk(x, out));
                }
                Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
                _ => {}
            }
        }
        walk(&generated, &mut refs);
        for r in refs {
            if let Some(name) = r.strip_prefix("#/components/schemas/") {
                assert!(names.contains_key(name), "dangling {r}");
            }
        }
        if std::env::var_os("HYPERD_BLESS").is_some() {
            let mut out = serde_json::to_string_pretty(&generated).unwrap();
            out.push('\n');
            std::fs::write(&committed, out).unwrap();
        } else {
            assert!(
                generated == doc,
                "docs/openapi.json differs from the API's types: run `HYPERD_BLESS=1 cargo test -p hyperd-api` and commit it"
            );
        }
    }
}
