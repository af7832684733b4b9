//! Mutual TLS on the cluster transport, over real `weft serve` processes: a rogue without a
//! certificate of the cluster's CA — none at all, or one from another CA — tries to join, to
//! forward a command, to push a replicated entity's events and to delete a DistributedData key.
//! Every attempt is refused, logged and counted, and the cluster's state is unchanged. The same
//! frames sent with a certificate of the cluster's CA do change it, so the attempts were real.
//! A node restarted with a new certificate of the same CA rejoins.

mod support;

use serde::Serialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use support::cluster::{NodeSpec, TestCluster, cluster_view, node_config, wait_for_members};
use support::node::{ServeProcess, get_json, metric};
use support::services::Postgres;
use weft::cluster::routing::Call;
use weft::cluster::{ClusterTls, ClusterTlsConfig, Faults, Inbound, Topic, Transport};
use weft::ddata::Entry;
use weft::journal::EventEnvelope;
use weft::replication::{ReplicationBody, ReplicationMessage};

/// A replicated type whose third replica, "n3", never runs: the name a rogue claims.
const TALLY: &str = r#"
[entities.tally]
plugin = "counter"
replication = { replicas = ["n1", "n3"], pull_interval_ms = 200 }
"#;

const INBOUND_REFUSALS: &str = "weft_cluster_connections_refused_total{direction=\"inbound\"}";

/// A DistributedData message as replicators send it.
#[derive(Serialize)]
enum DdataMessage {
    Deltas { entries: Vec<(String, Entry)> },
}

/// Answers nothing: a rogue only sends.
struct Deaf;

#[async_trait::async_trait]
impl Inbound for Deaf {
    async fn request(
        &self,
        _from: &str,
        _payload: Vec<u8>,
        _deadline: tokio::time::Instant,
    ) -> Result<Vec<u8>, String> {
        Err("deaf".into())
    }
    async fn message(&self, _from: &str, _topic: Topic, _payload: Vec<u8>) {}
}

/// What the attacks could change on n1.
#[derive(Debug, PartialEq)]
struct Observed {
    members: Vec<String>,
    counter: Value,
    tally: Value,
    hits: (u16, Value),
}

async fn observe(http: &reqwest::Client, url: &str) -> Observed {
    let view = cluster_view(http, url).await.expect("n1's view");
    let mut members: Vec<String> = view["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|member| member["name"].as_str().unwrap().to_owned())
        .collect();
    members.sort();
    let hits = http.get(format!("{url}/ddata/hits")).send().await.unwrap();
    Observed {
        members,
        counter: get_json(http, &format!("{url}/entities/counter/c1")).await["state"].clone(),
        tally: get_json(http, &format!("{url}/entities/tally/t1")).await["state"].clone(),
        hits: (hits.status().as_u16(), hits.json().await.unwrap()),
    }
}

/// The three frames of the attack: a forwarded increment of counter c1 by 7, replicated events of
/// tally t1 from replica n3, and the deletion of the DistributedData key `hits`.
fn attack_frames() -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let command = rmp_serde::to_vec_named(&json!({"op": "increment", "by": 7})).unwrap();
    let forward = rmp_serde::to_vec_named(&Call::Command {
        entity_type: "counter".into(),
        entity_id: "c1".into(),
        command,
        idempotency_key: None,
        request_id: None,
    })
    .unwrap();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let event = EventEnvelope {
        persistence_id: "tally|t1".into(),
        seq_nr: 1,
        writer: ulid::Ulid::new(),
        fencing_token: 0,
        timestamp: now_ms << 16,
        origin_replica: "n3".into(),
        origin_seq_nr: 1,
        version: BTreeMap::from([("n3".to_owned(), 1)]),
        concurrent: false,
        plugin: "counter".into(),
        payload: rmp_serde::to_vec_named(&json!({"type": "incremented", "by": 7})).unwrap(),
        idempotency: None,
    };
    let replication = rmp_serde::to_vec_named(&ReplicationMessage {
        entity_type: "tally".into(),
        entity_id: "t1".into(),
        body: ReplicationBody::Events {
            events: vec![event],
            complete: true,
        },
    })
    .unwrap();
    let delete = rmp_serde::to_vec_named(&DdataMessage::Deltas {
        entries: vec![("hits".into(), Entry::Deleted)],
    })
    .unwrap();
    (forward, replication, delete)
}

/// A transport on a free loopback port calling itself "n3", with `tls` or in plaintext.
async fn rogue_transport(tls: Option<ClusterTls>) -> Transport {
    Transport::bind(
        "n3",
        "127.0.0.1:0".parse().unwrap(),
        Arc::new(Deaf),
        Faults::default(),
        tls,
    )
    .await
    .unwrap()
}

/// Sends the three frames of the attack to n1, each from a transport of its own made by `tls`
/// (so each is one connection); returns how many connections were made.
async fn attack(n1: SocketAddr, tls: impl Fn() -> Option<ClusterTls>) -> u64 {
    let (forward, replication, delete) = attack_frames();
    let rogue = rogue_transport(tls()).await;
    // Refused, the request fails as if n1 were down; accepted, it is answered. Either way the
    // test looks at n1's state, not at this.
    let _ = rogue
        .request("n1", n1, forward, Duration::from_secs(2))
        .await;
    let rogue = rogue_transport(tls()).await;
    let _ = rogue.send("n1", n1, Topic::Replication, replication).await;
    let rogue = rogue_transport(tls()).await;
    let _ = rogue.send("n1", n1, Topic::Ddata, delete).await;
    3
}

/// Waits until n1 has refused `count` connections in all.
async fn refused_at_least(http: &reqwest::Client, url: &str, count: u64) {
    support::eventually(
        &format!("n1 refuses {count} connections in all"),
        || async { metric(http, url, INBOUND_REFUSALS).await >= count },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rogue_without_the_clusters_certificate_is_refused_and_changes_nothing() {
    let postgres = Postgres::start();
    let cluster = TestCluster {
        extra: format!("{TALLY}\n[ddata]\n"),
        ..TestCluster::new(&postgres, "n1").await
    };
    let n1 = cluster.start("n1", "actor");
    let n2 = cluster.start("n2", "gateway");
    let http = reqwest::Client::new();
    wait_for_members(&http, &n1.url, &["n1", "n2"]).await;
    wait_for_members(&http, &n2.url, &["n1", "n2"]).await;
    assert!(n1.log.lock().unwrap().contains("mutual TLS"));

    // State the attacks go for: a counter (through the gateway: over TLS), a replica's events,
    // a DistributedData key.
    for (url, path, by) in [
        (&n2.url, "entities/counter/c1", 5),
        (&n1.url, "entities/tally/t1", 1),
        (&n1.url, "ddata/hits", 1),
    ] {
        let sent = http
            .post(format!("{url}/{path}"))
            .json(&json!({"op": "increment", "by": by}))
            .send()
            .await
            .unwrap();
        assert_eq!(sent.status(), 200, "{path}: {}", sent.text().await.unwrap());
    }
    let before = observe(&http, &n1.url).await;
    assert_eq!(before.members, ["n1", "n2"]);
    assert_eq!(metric(&http, &n1.url, INBOUND_REFUSALS).await, 0);

    // Joining: rogue nodes announce themselves to n1 as any node would, again and again. The
    // one with a certificate trusts the cluster's CA (its certificate is no secret), so it
    // presents its own for n1 to check.
    let certs = cluster.root.path().join("certs");
    let foreign = tempfile::tempdir().unwrap();
    let foreign_files =
        weft::cluster::certs::write_certificates(foreign.path(), &["rogue".to_owned()]).unwrap();
    let foreign_section = support::cluster::tls_toml(
        &certs.join("ca.pem"),
        &foreign_files.nodes[0].0,
        &foreign_files.nodes[0].1,
    );
    let seed = SocketAddr::from(([127, 0, 0, 1], cluster.seed_port));
    let mut refused = 0;
    for (label, tls) in [
        ("no certificate", String::new()),
        ("another CA's certificate", foreign_section),
    ] {
        let spec = NodeSpec {
            name: "rogue",
            role: "actor",
            transport_port: 0,
            seed_name: "n1",
            seed_port: cluster.seed_port,
            database: &cluster.database,
            fault_injection: false,
            lease_ttl_ms: 2_000,
            suspect_to_down_after_ms: 1_000,
            extra: &format!("{tls}\n[ddata]\n"),
            tls: false,
        };
        let root = tempfile::tempdir().unwrap();
        let rogue = ServeProcess::start_with_config(&node_config(root.path(), &spec));
        refused += 2;
        refused_at_least(&http, &n1.url, refused).await;
        refused = metric(&http, &n1.url, INBOUND_REFUSALS).await;
        let view = cluster_view(&http, &rogue.url).await.unwrap();
        assert_eq!(
            view["members"].as_array().unwrap().len(),
            1,
            "{label}: {view}"
        );
        rogue.kill();
        assert_eq!(observe(&http, &n1.url).await, before, "{label}: joined");
    }

    // Forwarding, replication and DistributedData frames, written by hand.
    let foreign_ca = weft::cluster::certs::DevelopmentCa::generate().unwrap();
    let foreign_n3 = foreign_ca.issue("n3").unwrap();
    let cluster_ca = std::fs::read(certs.join("ca.pem")).unwrap();
    let foreign_tls = || {
        Some(
            ClusterTls::from_pem(
                &cluster_ca,
                foreign_n3.cert_pem.as_bytes(),
                foreign_n3.key_pem.as_bytes(),
            )
            .unwrap(),
        )
    };
    // One of the cluster's own certificates, for n2, in a process that claims to be n3.
    let n2_cert = ClusterTlsConfig {
        ca: certs.join("ca.pem"),
        cert: certs.join("n2.pem"),
        key: certs.join("n2.key"),
    };
    let impostor_tls = || Some(ClusterTls::load(&n2_cert).unwrap());
    let attacks: [(&str, &dyn Fn() -> Option<ClusterTls>); 3] = [
        ("no certificate", &|| None),
        ("another CA's certificate", &foreign_tls),
        ("a certificate naming another node", &impostor_tls),
    ];
    for (label, tls) in attacks {
        refused += attack(seed, tls).await;
        refused_at_least(&http, &n1.url, refused).await;
        assert_eq!(
            observe(&http, &n1.url).await,
            before,
            "{label}: state changed"
        );
    }
    let log = n1.log.lock().unwrap().clone();
    let logged = log.matches("refused a connection").count() as u64;
    assert!(
        logged >= refused,
        "{logged} refusals logged, {refused} counted:\n{log}"
    );
    assert_eq!(metric(&http, &n1.url, INBOUND_REFUSALS).await, refused);

    // The same frames with a certificate of the cluster's CA that names n3 change the state:
    // the attacks above were refused for their certificates alone.
    let n3 = weft::cluster::certs::write_certificates(&certs, &["n3".to_owned()]).unwrap();
    let n3_cert = ClusterTlsConfig {
        ca: n3.ca.clone(),
        cert: n3.nodes[0].0.clone(),
        key: n3.nodes[0].1.clone(),
    };
    attack(seed, || Some(ClusterTls::load(&n3_cert).unwrap())).await;
    support::eventually(
        "the certified frames change every part of the state",
        || async {
            let now = observe(&http, &n1.url).await;
            now.counter != before.counter
                && now.tally != before.tally
                && now.hits.1["deleted"] == true
        },
    )
    .await;
    assert_eq!(metric(&http, &n1.url, INBOUND_REFUSALS).await, refused);

    // A node restarted with a new certificate (a new key, the same CA) rejoins.
    n2.kill();
    wait_for_members(&http, &n1.url, &["n1"]).await;
    let n2 = cluster.start("n2", "gateway");
    wait_for_members(&http, &n2.url, &["n1", "n2"]).await;
    wait_for_members(&http, &n1.url, &["n1", "n2"]).await;
}
