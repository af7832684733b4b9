//! The PostgreSQL and Redis lease backends against throwaway servers: the conformance suite, leases
//! surviving a cut connection, and the lease manager holding, handing over and stepping down when
//! its backend is gone.

mod support;

use std::sync::Arc;
use std::time::Duration;

use support::services::{Postgres, Redis};
use weft::lease::{
    Lease, LeaseManager, LeaseStatus, LeaseTiming, PostgresLease, RedisLease, conformance,
};

/// How long a test waits for a status it expects soon.
const STATUS_DEADLINE: Duration = Duration::from_secs(20);

async fn postgres_lease(url: &str) -> Arc<dyn Lease> {
    Arc::new(
        PostgresLease::connect(url, 4)
            .await
            .expect("connect the PostgreSQL lease"),
    )
}

async fn redis_lease(url: &str) -> Arc<dyn Lease> {
    Arc::new(
        RedisLease::connect(url)
            .await
            .expect("connect the Redis lease"),
    )
}

async fn redis_command(url: &str, command: &mut redis::Cmd) -> redis::Value {
    let client = redis::Client::open(url).expect("Redis URL");
    let mut connection = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect to Redis");
    command
        .query_async(&mut connection)
        .await
        .expect("Redis command")
}

async fn postgres_execute(url: &str, sql: &str) {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect to PostgreSQL");
    tokio::spawn(connection);
    client.batch_execute(sql).await.expect(sql);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_passes_the_conformance_suite() {
    let postgres = Postgres::start();
    conformance::run_all(async || postgres_lease(&postgres.fresh_database().await).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_passes_the_conformance_suite() {
    let redis = Redis::start();
    let url = redis.url();
    conformance::run_all(async || {
        redis_command(&url, &mut redis::cmd("FLUSHDB")).await;
        redis_lease(&url).await
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_lease_survives_terminated_connections() {
    let postgres = Postgres::start();
    let url = postgres.fresh_database().await;
    let lease = postgres_lease(&url).await;
    conformance::check_lease_survives_connection_loss(lease, async || {
        postgres_execute(
            &url,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE application_name = 'weft-lease' AND datname = current_database()",
        )
        .await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_lease_survives_killed_clients_and_the_error_surfaces() {
    let redis = Redis::start();
    let url = redis.url();
    let lease = redis_lease(&url).await;
    let errors = conformance::check_lease_survives_connection_loss(lease, async || {
        redis_command(
            &url,
            redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("normal"),
        )
        .await;
    })
    .await;
    assert!(
        errors >= 1,
        "the call on the killed connection failed instead of silently succeeding"
    );
}

async fn wait_for_status(manager: &LeaseManager, wanted: LeaseStatus) {
    let mut watch = manager.watch();
    let reached = tokio::time::timeout(STATUS_DEADLINE, watch.wait_for(|status| *status == wanted))
        .await
        .unwrap_or_else(|_| {
            panic!(
                "{} did not become {wanted:?} within {STATUS_DEADLINE:?}",
                manager.name()
            )
        });
    assert_eq!(reached, wanted, "{} ended as {reached:?}", manager.name());
}

async fn wait_until_held(manager: &LeaseManager) -> u64 {
    let mut watch = manager.watch();
    let status = tokio::time::timeout(
        STATUS_DEADLINE,
        watch.wait_for(|status| status.fencing_token().is_some() || status.is_final()),
    )
    .await
    .unwrap_or_else(|_| panic!("{} was not acquired in time", manager.name()));
    status
        .fencing_token()
        .unwrap_or_else(|| panic!("{} ended as {status:?}", manager.name()))
}

/// Two managers contend for one name: the first holds it for longer than its time to live (it
/// renews), the second waits; when the first releases, the second takes over with a higher token.
async fn check_managers_hand_over(lease: Arc<dyn Lease>) {
    // Long enough that a busy machine delaying a renewal by most of a second loses nothing.
    let timing = LeaseTiming::for_ttl(Duration::from_secs(2));
    let first = LeaseManager::start(Arc::clone(&lease), "singleton", "node-1", timing)
        .expect("start the first manager");
    let first_token = wait_until_held(&first).await;
    let second = LeaseManager::start(Arc::clone(&lease), "singleton", "node-2", timing)
        .expect("start the second manager");

    tokio::time::sleep(timing.ttl + timing.ttl / 2).await;
    assert_eq!(
        first.status(),
        LeaseStatus::Held {
            fencing_token: first_token
        },
        "renewals kept the lease past its time to live"
    );
    assert_eq!(second.status(), LeaseStatus::Acquiring);
    let holder = lease
        .holder("singleton")
        .await
        .expect("holder")
        .expect("held");
    assert_eq!(
        (holder.owner.as_str(), holder.fencing_token),
        ("node-1", first_token)
    );

    assert_eq!(first.release().await, LeaseStatus::Released);
    let second_token = wait_until_held(&second).await;
    assert!(second_token > first_token);
    assert_eq!(second.release().await, LeaseStatus::Released);
    assert_eq!(lease.holder("singleton").await, Ok(None));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managers_hand_over_on_postgres() {
    let postgres = Postgres::start();
    check_managers_hand_over(postgres_lease(&postgres.fresh_database().await).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managers_hand_over_on_redis() {
    let redis = Redis::start();
    check_managers_hand_over(redis_lease(&redis.url()).await).await;
}

/// A manager holds a lease, then its backend's server stops (`stop_server`): renewals fail until the
/// local deadline, and the manager steps down, for good.
async fn check_manager_steps_down_when_the_server_is_gone(
    lease: Arc<dyn Lease>,
    stop_server: impl FnOnce(),
) {
    let manager = LeaseManager::start(
        lease,
        "order|42",
        "node-1",
        LeaseTiming::for_ttl(Duration::from_millis(800)),
    )
    .expect("start the manager");
    wait_until_held(&manager).await;

    stop_server();
    wait_for_status(&manager, LeaseStatus::Lost).await;
    assert_eq!(
        manager.release().await,
        LeaseStatus::Lost,
        "lost stays lost"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manager_steps_down_when_postgres_is_gone() {
    let postgres = Postgres::start();
    let lease = postgres_lease(&postgres.fresh_database().await).await;
    check_manager_steps_down_when_the_server_is_gone(lease, || drop(postgres)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manager_steps_down_when_redis_is_gone() {
    let redis = Redis::start();
    let lease = redis_lease(&redis.url()).await;
    check_manager_steps_down_when_the_server_is_gone(lease, || redis.stop()).await;
}
