//! TLS to PostgreSQL and Redis, against servers started with certificates from a CA made for the
//! test: the journal and both lease backends work over verified TLS and the server sees an
//! encrypted session; a server whose certificate does not chain to the named CA, or does not name
//! the host connected to, is refused with an error naming the server and the reason; `verify-ca`
//! and `require` relax exactly what they say.

mod support;

use std::sync::Arc;
use std::time::Duration;

use support::services::{Postgres, Redis, TestCertificates};
use weft::journal::{PostgresJournal, conformance as journal_conformance};
use weft::lease::{PostgresLease, RedisLease, conformance as lease_conformance};
use weft::postgres::{PgPool, SessionBounds};

const TTL: Duration = Duration::from_secs(10);

/// `url` with `parameters` added to its query.
fn with(url: &str, parameters: &str) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}{parameters}")
}

fn trusting(url: &str, certificates: &TestCertificates) -> String {
    with(
        url,
        &format!("sslrootcert={}", certificates.ca_file().display()),
    )
}

/// Whether the server says the session `url` opens is encrypted (`pg_stat_ssl`).
async fn session_is_encrypted(url: &str) -> bool {
    let pool = PgPool::connect(url, "weft-tls-test", 1, SessionBounds::for_lease_ttl(TTL))
        .await
        .expect("connect");
    let connection = pool.get().await.expect("a connection");
    connection
        .client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .expect("read pg_stat_ssl")
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_journal_and_leases_work_over_verified_tls() {
    let certificates = TestCertificates::generate();
    let postgres = Postgres::start_tls(&certificates);
    // A CA file alone means verify-full.
    let url = trusting(&postgres.fresh_database().await, &certificates);

    assert!(
        session_is_encrypted(&url).await,
        "the session is not encrypted"
    );
    assert!(
        !session_is_encrypted(&postgres.url()).await,
        "the check cannot tell a plain session from an encrypted one"
    );

    let journal = PostgresJournal::open(&url)
        .await
        .expect("open the journal over TLS");
    journal_conformance::check_append_and_read_round_trip(Arc::new(journal)).await;

    let lease = PostgresLease::connect(&url, 2)
        .await
        .expect("open the PostgreSQL leases over TLS");
    lease_conformance::check_acquire_renew_release_round_trip(Arc::new(lease)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_refuses_a_server_the_named_ca_did_not_sign() {
    let certificates = TestCertificates::generate();
    let postgres = Postgres::start_tls(&certificates);
    let other_ca = TestCertificates::generate();
    let url = trusting(&postgres.url(), &other_ca);

    let error = PostgresJournal::open(&url)
        .await
        .expect_err("a server signed by another CA is refused")
        .to_string();
    let server = format!("127.0.0.1:{}", postgres.port());
    assert!(
        error.contains(&server),
        "the error does not name {server}: {error}"
    );
    assert!(
        error.contains("UnknownIssuer"),
        "the error does not say why: {error}"
    );
    let error = PostgresLease::connect(&url, 1)
        .await
        .expect_err("the lease backend refuses it too")
        .to_string();
    assert!(error.contains("UnknownIssuer"), "{error}");

    // Asked for by name, `require` encrypts without checking the certificate.
    let unverified = with(&postgres.url(), "sslmode=require");
    assert!(session_is_encrypted(&unverified).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_refuses_a_certificate_for_another_host() {
    let certificates = TestCertificates::generate();
    let postgres = Postgres::start_tls(&certificates);
    // The TCP connection goes to 127.0.0.1; the certificate is checked against `db.example`.
    let elsewhere = format!(
        "postgres://postgres@db.example:{}/postgres?hostaddr=127.0.0.1",
        postgres.port()
    );

    let error = PostgresJournal::open(&trusting(&elsewhere, &certificates))
        .await
        .expect_err("a certificate for another name is refused")
        .to_string();
    assert!(
        error.contains("db.example"),
        "the error does not name the host: {error}"
    );
    assert!(
        error.contains("not valid for name"),
        "the error does not say why: {error}"
    );

    // verify-ca checks the chain only.
    let chain_only = with(&trusting(&elsewhere, &certificates), "sslmode=verify-ca");
    assert!(session_is_encrypted(&chain_only).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_server_is_refused_when_tls_is_asked_for() {
    let postgres = Postgres::start();
    let error = PostgresJournal::open(&with(&postgres.url(), "sslmode=require"))
        .await
        .expect_err("a server without TLS is refused")
        .to_string();
    assert!(error.contains("TLS"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_leases_work_over_verified_tls_and_refuse_an_unknown_ca() {
    let certificates = TestCertificates::generate();
    let redis = Redis::start_tls(&certificates);

    let lease = RedisLease::connect(&trusting(&redis.url(), &certificates))
        .await
        .expect("connect to Redis over TLS");
    lease_conformance::check_acquire_renew_release_round_trip(Arc::new(lease)).await;

    let other_ca = TestCertificates::generate();
    let error = match RedisLease::connect(&trusting(&redis.url(), &other_ca)).await {
        Ok(_) => panic!("a Redis server signed by another CA was accepted"),
        Err(error) => error.to_string(),
    };
    assert!(
        error.contains("127.0.0.1"),
        "the error does not name the server: {error}"
    );
    assert!(
        error.contains("UnknownIssuer"),
        "the error does not say why: {error}"
    );

    let relaxed = with(&trusting(&redis.url(), &certificates), "sslmode=require");
    assert!(
        RedisLease::connect(&relaxed).await.is_err(),
        "an unverified mode is refused for Redis"
    );
}
