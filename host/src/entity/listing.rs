//! The entities of a type, listed from the journal a page at a time: every id whose stream holds
//! events or a snapshot, active or passivated, with keyset paging on the id.
//!
//! An entity's stream is `<type>|<id>`; a replicated entity has one per replica,
//! `<type>|<id>|<replica>`, and those are adjacent in the journal's byte order (ids hold no `|`).
//! So a page is one walk along the type's range of persistence ids ([`Journal::stream_heads`]):
//! entities come in the byte order of their streams — the ids' byte order, except that for a
//! replicated type an id comes after the longer ids it begins (`"ab"` before `"a"`, as `b` sorts
//! before `|`). Streams of the other shape (left from a type that was replicated before, or the
//! other way round) are passed over.

use serde::Serialize;

use crate::journal::{Journal, JournalError};

/// Entities a page holds at most.
pub const ENTITY_PAGE_MAX: usize = 1_000;

/// Entities a page holds unless the caller asks for another number.
pub const ENTITY_PAGE_DEFAULT: usize = 100;

/// One entity of a listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EntityHead {
    pub id: String,
    /// The highest seq nr of its stream (events or snapshot); for a replicated entity, the sum
    /// over its replicas' streams, which is how many events it has.
    pub seq_nr: u64,
}

/// A page of a listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EntityPage {
    pub entities: Vec<EntityHead>,
    /// The id to list on from (`after`) for the next page; `None` at the end.
    pub next: Option<String>,
}

/// Up to `limit` entities of `entity_type` after the entity `after` (all from the first when
/// `None`). `replicated` says which shape of stream the type's entities have.
pub async fn list_entities(
    journal: &dyn Journal,
    entity_type: &str,
    replicated: bool,
    after: Option<&str>,
    limit: usize,
) -> Result<EntityPage, JournalError> {
    let prefix = format!("{entity_type}|");
    // The first id after every id beginning `<type>|`: `}` follows `|`.
    let until = format!("{entity_type}}}");
    // Where the walk starts (inclusive) and a stream to pass over there.
    let (mut from, mut passed) = match after {
        None => (prefix.clone(), None),
        // The entity's own stream is the last one it has.
        Some(id) if !replicated => (format!("{prefix}{id}"), Some(format!("{prefix}{id}"))),
        // Its replicas' streams `<type>|<id>|…` all sort before `<type>|<id>}`, and nothing of
        // another entity lies between.
        Some(id) => (format!("{prefix}{id}}}"), None),
    };
    let batch = limit.saturating_add(1);
    let mut entities: Vec<EntityHead> = Vec::new();
    loop {
        let heads = journal.stream_heads(&from, &until, batch).await?;
        let exhausted = heads.len() < batch;
        for head in &heads {
            if passed.as_deref() == Some(head.persistence_id.as_str()) {
                continue;
            }
            let Some(id) = entity_of(&head.persistence_id[prefix.len()..], replicated) else {
                continue;
            };
            match entities.last_mut() {
                Some(last) if last.id == id => last.seq_nr += head.seq_nr,
                _ => entities.push(EntityHead {
                    id: id.to_owned(),
                    seq_nr: head.seq_nr,
                }),
            }
        }
        // One entity beyond the page shows there is more, and that the page's last entity has
        // all its streams counted.
        if entities.len() > limit {
            entities.truncate(limit);
            let next = entities.last().map(|last| last.id.clone());
            return Ok(EntityPage { entities, next });
        }
        match heads.into_iter().next_back() {
            Some(last) if !exhausted => {
                from = last.persistence_id.clone();
                passed = Some(last.persistence_id);
            }
            _ => {
                return Ok(EntityPage {
                    entities,
                    next: None,
                });
            }
        }
    }
}

/// The entity id of a stream, given what follows `<type>|` in its persistence id; `None` for a
/// stream of the other shape.
fn entity_of(rest: &str, replicated: bool) -> Option<&str> {
    match (rest.split_once('|'), replicated) {
        (None, false) => Some(rest),
        (Some((id, _replica)), true) => Some(id),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use ulid::Ulid;

    use super::*;
    use crate::journal::InMemoryJournal;
    use crate::journal::conformance::sample_batch;

    async fn journal_with(streams: &[(&str, u64)]) -> InMemoryJournal {
        let journal = InMemoryJournal::new();
        let writer = Ulid::new();
        for (pid, count) in streams {
            journal
                .append(pid, 0, 0, sample_batch(pid, 0, 0, *count, writer))
                .await
                .expect("append");
        }
        journal
    }

    fn heads(page: &EntityPage) -> Vec<(&str, u64)> {
        page.entities
            .iter()
            .map(|head| (head.id.as_str(), head.seq_nr))
            .collect()
    }

    /// Every page of a listing, following `next`, as (id, seq nr).
    async fn all_pages(
        journal: &dyn Journal,
        entity_type: &str,
        replicated: bool,
        limit: usize,
    ) -> Vec<Vec<(String, u64)>> {
        let mut pages = Vec::new();
        let mut after = None;
        loop {
            let page = list_entities(journal, entity_type, replicated, after.as_deref(), limit)
                .await
                .expect("list");
            pages.push(
                heads(&page)
                    .into_iter()
                    .map(|(id, seq_nr)| (id.to_owned(), seq_nr))
                    .collect(),
            );
            match page.next {
                Some(next) => after = Some(next),
                None => return pages,
            }
        }
    }

    #[tokio::test]
    async fn pages_follow_the_ids_and_end_with_no_next() {
        let journal = journal_with(&[
            ("tally|b", 2),
            ("tally|a", 1),
            ("tally|ab", 3),
            ("tally|c", 1),
            ("tallyx|a", 1),
            ("tall|z", 1),
            ("tally|stray|eu", 1),
        ])
        .await;
        let first = list_entities(&journal, "tally", false, None, 2)
            .await
            .unwrap();
        assert_eq!(heads(&first), [("a", 1), ("ab", 3)]);
        assert_eq!(first.next.as_deref(), Some("ab"));
        let pages = all_pages(&journal, "tally", false, 2).await;
        let ids: Vec<Vec<&str>> = pages
            .iter()
            .map(|page| page.iter().map(|(id, _)| id.as_str()).collect())
            .collect();
        assert_eq!(
            ids,
            [vec!["a", "ab"], vec!["b", "c"]],
            "the stray replica stream passed over"
        );
        let after_last = list_entities(&journal, "tally", false, Some("c"), 2)
            .await
            .unwrap();
        assert_eq!(after_last.entities, []);
        assert_eq!(after_last.next, None);
        let empty = list_entities(&journal, "other", false, None, 100)
            .await
            .unwrap();
        assert_eq!(empty.entities, []);
    }

    #[tokio::test]
    async fn a_replicated_entity_is_listed_once_with_the_events_of_all_its_replicas() {
        let journal = journal_with(&[
            ("set|a|eu", 2),
            ("set|a|us", 3),
            ("set|ab|eu", 1),
            ("set|b|us", 4),
            ("set|b|eu", 1),
            ("set|plain", 1),
        ])
        .await;
        for limit in 1..=4 {
            let listed: Vec<(String, u64)> = all_pages(&journal, "set", true, limit).await.concat();
            assert_eq!(
                listed,
                [
                    ("ab".to_owned(), 1),
                    ("a".to_owned(), 5),
                    ("b".to_owned(), 5)
                ],
                "pages of {limit}: each entity once, whole, the stream order"
            );
        }
    }
}
