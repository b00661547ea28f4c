//! A build's text inputs: the Dockerfile (parser directives, continuations, flags,
//! stages), its words with variables and quotes, `KEY=VALUE` pairs, `.dockerignore`
//! patterns and `--chown` values. Never a panic; what parses keeps its shape (every
//! stage starts with FROM, no instruction is empty, cleaned paths stay relative and
//! free of `..`).
use hyperd::build::{context, dockerfile};

/// One run of the target on `data`.
pub fn run(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(df) = dockerfile::parse(s) {
        assert!(!df.stages.is_empty());
        for st in &df.stages {
            assert_eq!(st.from.keyword, "FROM");
            assert!(st.steps.iter().all(|i| !i.keyword.is_empty()));
        }
    }
    let vars: dockerfile::Vars = [("A".to_string(), "x y".to_string())].into();
    for escape in ['\\', '`'] {
        let _ = dockerfile::words(s, &vars, escape);
        let _ = dockerfile::pairs(s, &vars, escape, true);
    }
    let _ = dockerfile::json_form(s);
    if let Ok(ig) = context::Ignore::parse(s) {
        let _ = ig.ignored(std::path::Path::new("a/b/c"));
    }
    if let Some(p) = context::clean(s) {
        assert!(p.is_relative());
        assert!(!p.components().any(|c| c == std::path::Component::ParentDir));
    }
    let _ = context::parse_chown(s);
}
