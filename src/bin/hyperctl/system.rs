//! System commands: info, version.
use hyper::Method;
use hyperd::client::Client;

/// Show system-wide information.
pub async fn info(client: &Client) -> anyhow::Result<i32> {
    let v = client.json(Method::GET, "/info", None).await?;
    for (k, val) in v.as_object().into_iter().flatten() {
        println!(
            "{k}: {}",
            val.as_str()
                .map(str::to_string)
                .unwrap_or_else(|| val.to_string())
        );
    }
    Ok(0)
}

/// Show the client's and the daemon's versions.
pub async fn version(client: &Client) -> anyhow::Result<i32> {
    println!("Client version: {}", hyperd::VERSION);
    let v = client.json(Method::GET, "/version", None).await?;
    println!(
        "Server version: {} (API {})",
        v["Version"].as_str().unwrap_or("?"),
        v["ApiVersion"].as_str().unwrap_or("?")
    );
    Ok(0)
}
