//! `GET /entities/{type}`: the ids of a type's entities a page at a time, from the journal — so
//! entities of a node that restarted since are listed, on SQLite, and every node sharing a
//! PostgreSQL journal lists the entities the others wrote. Bad paging input gets a clear 400.

mod support;

use reqwest::StatusCode;
use serde_json::{Value, json};
use support::node::{TestNode, command_ok, config, get_json};
use support::services::Postgres;
use weft::config::{Config, JournalBackend};

/// Writes `counter` entities `c1`..`c5` (with `c2` twice) and one `other` entity through `writer`.
async fn write_entities(writer: &TestNode) {
    let increment = json!({"op": "increment", "by": 1});
    for id in ["c3", "c1", "c5", "c2", "c4", "c2"] {
        command_ok(&writer.http, &writer.url, "counter", id, &increment).await;
    }
    command_ok(&writer.http, &writer.url, "other", "o1", &increment).await;
}

/// Checks the listing of the entities [`write_entities`] wrote, as `reader` answers it: every
/// page, the default page, and the refusals of bad input.
async fn check_listing(reader: &TestNode) {
    let list = async |query: &str| {
        get_json(
            &reader.http,
            &format!("{}/entities/counter{query}", reader.url),
        )
        .await
    };
    let mut pages = Vec::new();
    let mut query = "?limit=2".to_owned();
    loop {
        let page = list(&query).await;
        pages.push(page["entities"].clone());
        match page["next"].as_str() {
            Some(next) => query = format!("?limit=2&after={next}"),
            None => break,
        }
    }
    assert_eq!(
        pages,
        [
            json!([{"id": "c1", "seq_nr": 1}, {"id": "c2", "seq_nr": 2}]),
            json!([{"id": "c3", "seq_nr": 1}, {"id": "c4", "seq_nr": 1}]),
            json!([{"id": "c5", "seq_nr": 1}]),
        ],
        "pages of two, in id order, each id once with its stream's seq nr"
    );
    assert_eq!(
        list("").await,
        json!({
            "entities": [
                {"id": "c1", "seq_nr": 1}, {"id": "c2", "seq_nr": 2}, {"id": "c3", "seq_nr": 1},
                {"id": "c4", "seq_nr": 1}, {"id": "c5", "seq_nr": 1},
            ],
            "next": null,
        }),
        "the default page holds them all; another type's entity is not among them"
    );
    assert_eq!(
        list("?after=").await,
        list("").await,
        "an empty after is the first page"
    );
    let refused = [
        (
            "/entities/counter?limit=1001",
            StatusCode::BAD_REQUEST,
            "invalid_query",
            "1 to 1000",
        ),
        (
            "/entities/counter?limit=0",
            StatusCode::BAD_REQUEST,
            "invalid_query",
            "1 to 1000",
        ),
        (
            "/entities/counter?limit=many",
            StatusCode::BAD_REQUEST,
            "invalid_query",
            "limit",
        ),
        (
            "/entities/counter?after=a%7Cb",
            StatusCode::BAD_REQUEST,
            "invalid_name",
            "'|'",
        ),
        (
            "/entities/nosuchtype",
            StatusCode::NOT_FOUND,
            "unknown_entity_type",
            "nosuchtype",
        ),
    ];
    for (path, status, code, fragment) in refused {
        let response = reader
            .http
            .get(format!("{}{path}", reader.url))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status, "{path}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], json!(code), "{path}: {body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(fragment),
            "{path}: {message:?} names {fragment:?}"
        );
    }
}

fn counter_config(root: &std::path::Path) -> Config {
    let mut config = config(root, &["counter"]);
    config.entities.insert(
        "other".to_owned(),
        weft::entity::EntityTypeConfig::for_plugin("counter"),
    );
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_lists_the_entities_its_sqlite_journal_holds() {
    let root = tempfile::tempdir().unwrap();
    let before = TestNode::start(counter_config(root.path())).await;
    write_entities(&before).await;
    before.node.shutdown().await.expect("the node stops");
    // No entity is active after the restart: the listing comes from the journal.
    let after = TestNode::start(counter_config(root.path())).await;
    check_listing(&after).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_sharing_a_postgres_journal_list_each_others_entities() {
    let postgres = Postgres::start();
    let url = postgres.fresh_database().await;
    let on_postgres = |root: &std::path::Path| {
        let mut config = counter_config(root);
        config.journal.backend = JournalBackend::Postgres;
        config.journal.url = Some(url.clone());
        config
    };
    let (root_a, root_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let writer = TestNode::start(on_postgres(root_a.path())).await;
    let reader = TestNode::start(on_postgres(root_b.path())).await;
    write_entities(&writer).await;
    check_listing(&reader).await;
}
