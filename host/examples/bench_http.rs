//! HTTP benchmark (a program, not a test): `cargo xtask bench http`.
//!
//! Starts a node in this process with the counter plugin on the SQLite journal, and beside it an
//! axum server whose route does nothing, then drives both with `wrk` (installed by the xtask)
//! with the same POST and connection count. The ratio is what a durable command costs over the
//! bare HTTP stack.

use axum::routing::post;
use std::process::Command;

const CONNECTIONS: u32 = 64;
const SECONDS: u32 = 10;
const ENTITIES: u32 = 64;

/// wrk script: POST an increment to one of ENTITIES counters, round robin.
const WRK_SCRIPT: &str = r#"
counter = 0
request = function()
  counter = counter + 1
  local path = "/entities/counter/e" .. (counter % ENTITIES)
  return wrk.format("POST", path, {["Content-Type"] = "application/json"}, '{"op":"increment","by":1}')
end
"#;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let plugins = dir.path().join("plugins");
    std::fs::create_dir_all(&plugins)?;
    let wasm =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/plugins/counter.wasm");
    std::fs::copy(wasm, plugins.join("counter.wasm"))?;
    let mut config = weft::config::Config::default();
    config.node.listen = "127.0.0.1:0".parse()?;
    config.node.data_dir = dir.path().join("data");
    config.node.plugins_dir = Some(plugins);
    let node = weft::node::Node::start(config).await?;
    node.ready().await;

    let noop = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let noop_addr = noop.local_addr()?;
    let app = axum::Router::new().route("/entities/counter/{id}", post(|| async { "{}" }));
    tokio::spawn(async move { axum::serve(noop, app).await });

    let script = dir.path().join("post.lua");
    std::fs::write(
        &script,
        WRK_SCRIPT.replace("ENTITIES", &ENTITIES.to_string()),
    )?;
    let node_rps = wrk(&format!("http://{}", node.addr), &script).await?;
    let noop_rps = wrk(&format!("http://{noop_addr}"), &script).await?;
    println!(
        "weft HTTP benchmark: wrk -t2 -c{CONNECTIONS} -d{SECONDS}s, POST increment over {ENTITIES} counters"
    );
    println!("| measure | requests/s |");
    println!("|---|---|");
    println!("| weft node, durable command (SQLite) | {node_rps:.0} |");
    println!("| axum route that does nothing | {noop_rps:.0} |");
    println!("| ratio weft / no-op | {:.2} |", node_rps / noop_rps);
    node.shutdown().await
}

async fn wrk(url: &str, script: &std::path::Path) -> anyhow::Result<f64> {
    let (target, script) = (url.to_owned(), script.to_owned());
    let output = tokio::task::spawn_blocking(move || {
        Command::new("wrk")
            .args([
                "-t2",
                &format!("-c{CONNECTIONS}"),
                &format!("-d{SECONDS}s"),
                "-s",
            ])
            .arg(&script)
            .arg(&target)
            .output()
    })
    .await??;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        anyhow::bail!("wrk failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    if let Some(errors) = text.lines().find(|l| l.contains("Non-2xx")) {
        anyhow::bail!("wrk saw failed requests against {url}: {errors}");
    }
    text.lines()
        .find_map(|line| line.strip_prefix("Requests/sec:"))
        .and_then(|value| value.trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no Requests/sec in wrk output:\n{text}"))
}
