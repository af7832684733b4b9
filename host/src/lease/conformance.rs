//! The conformance suite: the behaviour every [`Lease`] backend must show, as async checks that panic
//! with a message naming the broken promise. Each backend's tests call [`run_all`] with a factory of
//! fresh, empty backends, against a real server where the backend has one; backends with connections
//! also run [`check_lease_survives_connection_loss`] with a way to cut them.
//!
//! Time-dependent checks use short times to live and wait on conditions with deadlines; the only
//! timing they assert is a lower bound no load can break: a lease is never taken over before its time
//! to live has passed since its holder asked for it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::rules::{NAME_BYTES_MAX, TTL_MAX};
use super::{Grant, Lease, LeaseError};

/// A time to live nothing in the suite waits out.
const LONG_TTL: Duration = Duration::from_secs(60);
/// The time to live of the takeover check: short enough to wait out, long enough that a competing
/// acquire sent right after the grant certainly arrives before it ends.
const SHORT_TTL: Duration = Duration::from_millis(600);
/// How long a check waits for a condition that should come true soon before it fails.
const CONDITION_DEADLINE: Duration = Duration::from_secs(20);
/// Backend clocks and ours may disagree by their granularity: the takeover lower bound allows this.
const CLOCK_GRANULARITY: Duration = Duration::from_millis(5);

/// Clients racing in the contention check, names they race for, and attempts per client.
pub const CONTENDING_CLIENTS: usize = 8;
pub const CONTENDED_NAMES: usize = 3;
pub const ATTEMPTS_PER_CLIENT: usize = 30;

/// Runs every check, each against a fresh backend from `make_empty_lease`.
pub async fn run_all(make_empty_lease: impl AsyncFn() -> Arc<dyn Lease>) {
    check_acquire_renew_release_round_trip(make_empty_lease().await).await;
    check_a_live_lease_excludes_other_owners(make_empty_lease().await).await;
    check_acquire_by_the_holder_grants_a_higher_token(make_empty_lease().await).await;
    check_release_then_acquire_yields_a_higher_token(make_empty_lease().await).await;
    check_invalid_requests_are_refused(make_empty_lease().await).await;
    check_takeover_after_the_time_to_live(make_empty_lease().await).await;
    check_mutual_exclusion_under_contention(make_empty_lease().await).await;
    check_held_leases_are_listed_in_pages(make_empty_lease().await).await;
}

/// The live leases, by name in byte order after a given name: released ones are not listed, and
/// each comes with its holder and token.
pub async fn check_held_leases_are_listed_in_pages(lease: Arc<dyn Lease>) {
    let ttl = Duration::from_secs(30);
    assert_eq!(lease.held("", 10).await, Ok(vec![]));
    let mut tokens = HashMap::new();
    for (name, owner) in [
        ("b/2", "w2"),
        ("a/1", "w1"),
        ("entity:x|1", "w3"),
        ("c/3", "w1"),
    ] {
        tokens.insert(
            name,
            acquired(lease.as_ref(), name, owner, ttl)
                .await
                .fencing_token,
        );
    }
    let released = lease
        .release("c/3", "w1", tokens["c/3"])
        .await
        .expect("release");
    assert!(released);
    let listed = |page: Vec<super::HeldLease>| -> Vec<(String, String, u64)> {
        page.into_iter()
            .map(|held| {
                assert!(held.holder.expires_in <= ttl, "{held:?}");
                (held.name, held.holder.owner, held.holder.fencing_token)
            })
            .collect()
    };
    let all = vec![
        ("a/1".to_owned(), "w1".to_owned(), tokens["a/1"]),
        ("b/2".to_owned(), "w2".to_owned(), tokens["b/2"]),
        (
            "entity:x|1".to_owned(),
            "w3".to_owned(),
            tokens["entity:x|1"],
        ),
    ];
    assert_eq!(listed(lease.held("", 10).await.expect("list")), all);
    assert_eq!(listed(lease.held("", 2).await.expect("list")), all[..2]);
    assert_eq!(listed(lease.held("a/1", 10).await.expect("list")), all[1..]);
    assert_eq!(
        listed(lease.held("entity:x|1", 10).await.expect("list")),
        []
    );
}

async fn acquired(lease: &dyn Lease, name: &str, owner: &str, ttl: Duration) -> Grant {
    lease
        .acquire(name, owner, ttl)
        .await
        .unwrap_or_else(|error| panic!("{owner} acquiring {name}: {error}"))
        .unwrap_or_else(|| panic!("{owner} acquiring the free lease {name} was refused"))
}

pub async fn check_acquire_renew_release_round_trip(lease: Arc<dyn Lease>) {
    let name = "job/ä ✓";
    assert_eq!(lease.holder(name).await, Ok(None), "a new lease is free");
    let grant = acquired(&*lease, name, "worker-1", LONG_TTL).await;
    assert!(
        grant.fencing_token > 0,
        "tokens start above 0, which means no lease"
    );
    assert_eq!(grant.ttl, LONG_TTL);

    let holder = lease.holder(name).await.expect("holder").expect("held");
    assert_eq!(
        (holder.owner.as_str(), holder.fencing_token),
        ("worker-1", grant.fencing_token)
    );
    assert!(
        holder.expires_in <= LONG_TTL && holder.expires_in > LONG_TTL / 2,
        "expires in {:?}",
        holder.expires_in
    );

    let shorter = LONG_TTL / 2;
    assert_eq!(
        lease
            .renew(name, "worker-1", grant.fencing_token, shorter)
            .await,
        Ok(Some(Grant {
            fencing_token: grant.fencing_token,
            ttl: shorter
        })),
        "renewing keeps the token"
    );
    let holder = lease.holder(name).await.expect("holder").expect("held");
    assert!(
        holder.expires_in <= shorter,
        "a renewal sets the time to live from now: {:?}",
        holder.expires_in
    );

    assert_eq!(
        lease.release(name, "worker-1", grant.fencing_token).await,
        Ok(true)
    );
    assert_eq!(lease.holder(name).await, Ok(None), "released");
    assert_eq!(
        lease.release(name, "worker-1", grant.fencing_token).await,
        Ok(false),
        "releasing twice is a no-op"
    );
    assert_eq!(
        lease
            .renew(name, "worker-1", grant.fencing_token, LONG_TTL)
            .await,
        Ok(None),
        "a released lease cannot be renewed"
    );
}

pub async fn check_a_live_lease_excludes_other_owners(lease: Arc<dyn Lease>) {
    let name = "shard-7";
    let grant = acquired(&*lease, name, "a", LONG_TTL).await;
    let token = grant.fencing_token;

    assert_eq!(
        lease.acquire(name, "b", LONG_TTL).await,
        Ok(None),
        "b cannot take a's live lease"
    );
    assert_eq!(
        lease.renew(name, "b", token, LONG_TTL).await,
        Ok(None),
        "b cannot renew a's lease, even with a's token"
    );
    assert_eq!(
        lease.release(name, "b", token).await,
        Ok(false),
        "a release by a non-holder is a no-op"
    );
    assert_eq!(
        lease.renew(name, "a", token + 1, LONG_TTL).await,
        Ok(None),
        "the holder with a wrong token cannot renew"
    );
    assert_eq!(
        lease.release(name, "a", token + 1).await,
        Ok(false),
        "the holder with a wrong token cannot release"
    );
    assert_eq!(
        lease.release(name, "a", u64::MAX).await,
        Ok(false),
        "a token beyond every stored one"
    );
    let holder = lease
        .holder(name)
        .await
        .expect("holder")
        .expect("still held");
    assert_eq!((holder.owner.as_str(), holder.fencing_token), ("a", token));
    assert_eq!(
        lease.holder("shard-8").await,
        Ok(None),
        "leases are per name"
    );
    acquired(&*lease, "shard-8", "b", LONG_TTL).await;
}

pub async fn check_acquire_by_the_holder_grants_a_higher_token(lease: Arc<dyn Lease>) {
    let name = "singleton";
    let first = acquired(&*lease, name, "node-1", LONG_TTL).await;
    let second = acquired(&*lease, name, "node-1", LONG_TTL).await;
    assert!(
        second.fencing_token > first.fencing_token,
        "a restarted holder gets a new token: {second:?} after {first:?}"
    );
    assert_eq!(
        lease
            .renew(name, "node-1", first.fencing_token, LONG_TTL)
            .await,
        Ok(None),
        "the earlier token is stale"
    );
    assert_eq!(
        lease
            .renew(name, "node-1", second.fencing_token, LONG_TTL)
            .await,
        Ok(Some(second))
    );
}

pub async fn check_release_then_acquire_yields_a_higher_token(lease: Arc<dyn Lease>) {
    let name = "stream/orders";
    let mut last_token = 0;
    for (round, owner) in ["a", "b", "a", "c"].into_iter().enumerate() {
        let grant = acquired(&*lease, name, owner, LONG_TTL).await;
        assert!(
            grant.fencing_token > last_token,
            "round {round}: token {} after {last_token}",
            grant.fencing_token
        );
        last_token = grant.fencing_token;
        assert_eq!(
            lease.release(name, owner, grant.fencing_token).await,
            Ok(true)
        );
    }
}

pub async fn check_invalid_requests_are_refused(lease: Arc<dyn Lease>) {
    let long_name = "n".repeat(NAME_BYTES_MAX + 1);
    let invalid: [(&str, &str, &str, Duration); 6] = [
        ("an empty name", "", "a", LONG_TTL),
        ("an empty owner", "job", "", LONG_TTL),
        ("a name too long", &long_name, "a", LONG_TTL),
        ("a control character", "job\n", "a", LONG_TTL),
        ("a zero time to live", "job", "a", Duration::ZERO),
        (
            "a time to live too long",
            "job",
            "a",
            TTL_MAX + Duration::from_millis(1),
        ),
    ];
    for (what, name, owner, ttl) in invalid {
        let acquire = lease.acquire(name, owner, ttl).await;
        assert!(
            matches!(acquire, Err(LeaseError::Invalid(_))),
            "acquire with {what}: {acquire:?}"
        );
        let renew = lease.renew(name, owner, 1, ttl).await;
        assert!(
            matches!(renew, Err(LeaseError::Invalid(_))),
            "renew with {what}: {renew:?}"
        );
    }
    assert!(matches!(
        lease.release("", "a", 1).await,
        Err(LeaseError::Invalid(_))
    ));
    assert!(matches!(
        lease.holder("").await,
        Err(LeaseError::Invalid(_))
    ));
    assert_eq!(lease.holder("job").await, Ok(None), "nothing was taken");
}

/// The holder stops renewing: an acquire answered right after its grant fails, one after the time to
/// live succeeds with a higher token, and the old holder can neither renew nor release any more.
pub async fn check_takeover_after_the_time_to_live(lease: Arc<dyn Lease>) {
    let name = "leader";
    let sent_at = Instant::now();
    let first = acquired(&*lease, name, "old", SHORT_TTL).await;
    let early = lease.acquire(name, "new", LONG_TTL).await;
    // On a machine so busy that the answer came after the expiry, a grant is correct: only an answer
    // before the expiry must be a refusal.
    if sent_at.elapsed() + CLOCK_GRANULARITY < SHORT_TTL {
        assert_eq!(early, Ok(None), "an acquire well before the expiry fails");
    }

    let deadline = sent_at + SHORT_TTL + CONDITION_DEADLINE;
    let second = loop {
        assert!(
            Instant::now() < deadline,
            "the lease was not free {CONDITION_DEADLINE:?} after its time to live"
        );
        if let Some(grant) = lease
            .acquire(name, "new", LONG_TTL)
            .await
            .expect("acquire while waiting for the takeover")
        {
            break grant;
        }
        tokio::time::sleep(SHORT_TTL / 20).await;
    };
    let taken_after = sent_at.elapsed();
    assert!(
        taken_after + CLOCK_GRANULARITY >= SHORT_TTL,
        "taken over {taken_after:?} after the grant, before its time to live {SHORT_TTL:?}"
    );
    assert!(second.fencing_token > first.fencing_token);
    assert_eq!(
        lease
            .renew(name, "old", first.fencing_token, SHORT_TTL)
            .await,
        Ok(None),
        "the old holder's renewal fails"
    );
    assert_eq!(
        lease.release(name, "old", first.fencing_token).await,
        Ok(false),
        "the old holder's release is a no-op"
    );
    let holder = lease.holder(name).await.expect("holder").expect("held");
    assert_eq!(
        (holder.owner.as_str(), holder.fencing_token),
        ("new", second.fencing_token)
    );
}

/// [`CONTENDING_CLIENTS`] clients race for [`CONTENDED_NAMES`] names, [`ATTEMPTS_PER_CLIENT`] times
/// each. A model records the holder of every name from a grant to just before its release: a grant
/// while the model has a holder would be two holders at once. Tokens per name strictly increase in
/// the order of the grants, every winner's release succeeds, and every name was won at least once.
pub async fn check_mutual_exclusion_under_contention(lease: Arc<dyn Lease>) {
    #[derive(Default)]
    struct NameModel {
        holder: Option<usize>,
        last_token: u64,
        grants: usize,
    }
    let model: Arc<Mutex<HashMap<String, NameModel>>> = Arc::default();
    let model_of = |model: &Mutex<HashMap<String, NameModel>>| {
        model
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain()
            .collect::<Vec<_>>()
    };

    let mut clients = tokio::task::JoinSet::new();
    for client in 0..CONTENDING_CLIENTS {
        let (lease, model) = (Arc::clone(&lease), Arc::clone(&model));
        clients.spawn(async move {
            let owner = format!("client-{client}");
            for attempt in 0..ATTEMPTS_PER_CLIENT {
                let name = format!("contended-{}", (client + attempt) % CONTENDED_NAMES);
                let Some(grant) = lease
                    .acquire(&name, &owner, LONG_TTL)
                    .await
                    .expect("a contended acquire")
                else {
                    tokio::task::yield_now().await;
                    continue;
                };
                {
                    let mut model = model.lock().unwrap_or_else(PoisonError::into_inner);
                    let entry = model.entry(name.clone()).or_default();
                    assert_eq!(
                        entry.holder, None,
                        "{owner} was granted {name} while client {:?} held it",
                        entry.holder
                    );
                    assert!(
                        grant.fencing_token > entry.last_token,
                        "{name}: token {} granted after {}",
                        grant.fencing_token,
                        entry.last_token
                    );
                    *entry = NameModel {
                        holder: Some(client),
                        last_token: grant.fencing_token,
                        grants: entry.grants + 1,
                    };
                }
                // Hold it across a few scheduling points, so that others try while it is held.
                for _ in 0..3 {
                    tokio::task::yield_now().await;
                }
                model
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .entry(name.clone())
                    .or_default()
                    .holder = None;
                assert_eq!(
                    lease.release(&name, &owner, grant.fencing_token).await,
                    Ok(true),
                    "{owner} releases {name}, which it holds"
                );
            }
        });
    }
    while let Some(joined) = clients.join_next().await {
        joined.expect("contending client");
    }
    let names = model_of(&model);
    assert_eq!(names.len(), CONTENDED_NAMES, "every name was won");
    for (name, state) in names {
        assert!(state.grants > 0, "{name} was never granted");
        assert_eq!(lease.holder(&name).await, Ok(None), "{name} ends released");
    }
}

/// Cuts the backend's connections (`sever`) while `owner` holds a lease. Until the backend has
/// reconnected, calls may fail with [`LeaseError::Unavailable`], never with a wrong answer; then the
/// holder renews with its token as before: a lost connection loses no lease.
pub async fn check_lease_survives_connection_loss(
    lease: Arc<dyn Lease>,
    sever: impl AsyncFn(),
) -> usize {
    let name = "connection-loss";
    let grant = acquired(&*lease, name, "holder", LONG_TTL).await;
    sever().await;

    let deadline = Instant::now() + CONDITION_DEADLINE;
    let mut errors = 0;
    loop {
        assert!(
            Instant::now() < deadline,
            "the backend did not recover within {CONDITION_DEADLINE:?} of losing its connections"
        );
        match lease
            .renew(name, "holder", grant.fencing_token, LONG_TTL)
            .await
        {
            Ok(Some(renewed)) => {
                assert_eq!(renewed, grant);
                break;
            }
            Ok(None) => panic!("the lease was lost with the connection"),
            Err(LeaseError::Unavailable(_)) => errors += 1,
            Err(other) => panic!("a severed connection failed a renewal with {other:?}"),
        }
    }
    let holder = lease.holder(name).await.expect("holder").expect("held");
    assert_eq!(holder.fencing_token, grant.fencing_token);
    errors
}
