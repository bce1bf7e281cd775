//! Answering one request of the protocol from a store: each list bounded before it is
//! read, each answer within its budget, and writes only to accepted partitions.

use crate::error::{Error, Result};
use crate::exchange::Replica;
use crate::record::MAX_KEY_BYTES;
use crate::store::Store;

use super::proto::{
    self, Request, Response, ANSWER_BUDGET, MAX_DESCEND_HASHES, MAX_DESCEND_NODES, MAX_PARTITIONS,
};
use super::server::Accept;

/// Peers write only to partitions the store holds or the server accepts.
fn check_accepted(store: &Store, partition: u32, accept: &Accept) -> Result<()> {
    let allowed = match accept {
        Accept::Any => true,
        Accept::Listed(listed) => {
            listed.contains(&partition) || store.partitions().contains(&partition)
        }
        Accept::Existing => store.partitions().contains(&partition),
    };
    if !allowed {
        return Err(Error::Protocol(format!(
            "partition {partition} is not served here; nothing written"
        )));
    }
    Ok(())
}

fn too_many(what: &str, n: usize) -> Error {
    Error::Protocol(format!("{n} {what} in one request (over the limit)"))
}

/// The answer to one request, within the protocol's limits.
pub(super) fn answer(store: &Store, request: Request, accept: &Accept) -> Result<Response> {
    Ok(match request {
        Request::Partitions => {
            let partitions = Replica::partitions(store)?;
            if partitions.len() > MAX_PARTITIONS {
                return Err(Error::InvalidArgument(format!(
                    "this store holds {} partitions, more than one answer lists ({MAX_PARTITIONS}); \
                     give its peers their partitions",
                    partitions.len()
                )));
            }
            Response::Partitions(partitions)
        }
        Request::Roots(p) => Response::Hashes(proto::hashes(&store.roots(&p)?)),
        Request::Children {
            partition,
            level,
            parents,
        } => {
            // Children of a few thousand parents are millions of hashes in a wide tree:
            // bounded before they are read.
            let hashes = parents.len().saturating_mul(store.shape().width as usize);
            if hashes > MAX_DESCEND_HASHES {
                return Err(too_many("child hashes asked", hashes));
            }
            Response::Hashes(proto::hashes(&Replica::children(
                store, partition, level, &parents,
            )?))
        }
        Request::Descend {
            partition,
            level,
            runs,
        } => {
            let count: usize = runs.iter().map(|(_, hashes)| hashes.len()).sum();
            if count > MAX_DESCEND_NODES {
                return Err(too_many("nodes", count));
            }
            let width = store.shape().width as usize;
            let mut nodes = Vec::with_capacity(count);
            for (first, hashes) in runs {
                for (i, h) in (0u64..).zip(hashes) {
                    // A run counting past u64::MAX is past any tree (the store refuses
                    // numbers past the level's nodes).
                    let n = first.checked_add(i).ok_or_else(|| {
                        Error::InvalidArgument(format!("node {first} + {i} is past the tree"))
                    })?;
                    nodes.push((n, crate::Hash::from_bytes(h)));
                }
            }
            // Answer a prefix whose children fit the budget (each differing node may
            // bring `width` hashes), at least one node.
            let step = (MAX_DESCEND_HASHES / width).max(1);
            let (mut covered, mut hashes, mut out) = (0usize, 0usize, Vec::new());
            for chunk in nodes.chunks(step) {
                // Stop once the budget is spent: an answer holds at most the budget plus
                // one chunk's worst case, well inside a frame.
                if hashes >= MAX_DESCEND_HASHES {
                    break;
                }
                let answers = store.descend(partition, level, chunk)?;
                hashes += answers.iter().map(|(_, kids)| kids.len()).sum::<usize>();
                covered += chunk.len();
                out.extend(
                    answers
                        .into_iter()
                        .map(|(n, kids)| (n, proto::hashes(&kids))),
                );
            }
            Response::Descended {
                covered: covered as u64,
                nodes: out,
            }
        }
        Request::Segments {
            partition,
            segments,
            after,
        } => {
            if after.as_ref().is_some_and(|k| k.len() > MAX_KEY_BYTES) {
                return Err(Error::InvalidArgument(format!(
                    "a key to start after of more than {MAX_KEY_BYTES} bytes"
                )));
            }
            // The store stops at the byte budget; the client asks again for the rest.
            let page = store.segments(partition, &segments, after.as_deref())?;
            Response::Segments {
                lists: page
                    .lists
                    .iter()
                    .map(|items| items.iter().map(Into::into).collect())
                    .collect(),
                partial: page.partial,
            }
        }
        Request::Records { partition, keys } => {
            let mut out = Vec::new();
            let mut bytes = 0;
            for key in &keys {
                let found = store.records(partition, std::slice::from_ref(key))?;
                let size: usize = found
                    .iter()
                    .map(|l| l.record().map_or(8, |r| r.value.len() + 48))
                    .sum();
                if !out.is_empty() && bytes + size > ANSWER_BUDGET {
                    break;
                }
                bytes += size;
                out.extend(found.iter().map(Into::into));
            }
            Response::Records(out)
        }
        Request::Write { partition, writes } => {
            check_accepted(store, partition, accept)?;
            let mut written = 0;
            for proto::WireWrite { key, record } in writes {
                written += u64::from(store.replicate(partition, &key, &record.into())?);
            }
            // Acknowledged writes are durable, as a replica's acknowledgement promises.
            store.flush()?;
            Response::Written(written)
        }
        Request::Status => Response::Error("status is answered by the connection".into()),
        Request::Apply { partition, repairs } => {
            check_accepted(store, partition, accept)?;
            let repairs: Vec<_> = repairs.into_iter().map(Into::into).collect();
            let applied = store.apply(partition, &repairs)?;
            // Acknowledged repairs are durable: the peer will not send them again.
            store.flush()?;
            Response::Applied {
                written: applied.written,
                stale: applied.stale,
                refused: applied.refused,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::proto::{MAX_ITEMS, MAX_SEGMENTS};
    use crate::options::Options;

    #[test]
    fn requests_over_the_limits_are_refused_before_work() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Options::default()).unwrap();
        let over = MAX_ITEMS + 1;
        let record = || (&crate::Record::value(1, b"v")).into();
        // Each list one item over its limit is refused by the decoder, before the
        // request exists; at its limit it decodes.
        let requests = |n: usize, segments: usize, nodes: usize| {
            [
                Request::Roots(vec![0; n]),
                Request::Children {
                    partition: 0,
                    level: 0,
                    parents: vec![0; n],
                },
                Request::Descend {
                    partition: 0,
                    level: 1,
                    runs: vec![(0, Vec::new()); nodes],
                },
                Request::Records {
                    partition: 0,
                    keys: vec![Vec::new(); n],
                },
                Request::Segments {
                    partition: 0,
                    segments: vec![(0, true); segments],
                    after: None,
                },
                Request::Apply {
                    partition: 0,
                    repairs: (0..n)
                        .map(|_| proto::WireRepair {
                            key: Vec::new(),
                            expected: None,
                            record: record(),
                        })
                        .collect(),
                },
                Request::Write {
                    partition: 0,
                    writes: (0..n)
                        .map(|_| proto::WireWrite {
                            key: Vec::new(),
                            record: record(),
                        })
                        .collect(),
                },
            ]
        };
        let decoded = |request: &Request| {
            crate::net::channel::decode::<Request>(&postcard::to_stdvec(request).unwrap())
        };
        for request in requests(MAX_ITEMS, MAX_SEGMENTS, MAX_DESCEND_NODES) {
            assert!(decoded(&request).is_ok(), "{request:?}");
        }
        for request in requests(over, MAX_SEGMENTS + 1, MAX_DESCEND_NODES + 1) {
            let err = decoded(&request).unwrap_err().to_string();
            assert!(err.contains("over its limit"), "{err}");
        }
        // Nodes over the limit spread over runs within it are refused before work.
        let spread = Request::Descend {
            partition: 0,
            level: 1,
            runs: vec![(0, vec![[0u8; 16]; MAX_DESCEND_NODES / 2 + 1]); 2],
        };
        let err = answer(&store, decoded(&spread).unwrap(), &Accept::Any).unwrap_err();
        assert!(err.to_string().contains("in one request"), "{err}");
        // Children are bounded by the hashes they make: in a tree of width 65,536, four
        // parents at most (a few thousand would be gigabytes).
        let wide_dir = tempfile::tempdir().unwrap();
        let wide = Options::default().with_segments(1 << 16, 1 << 16).unwrap();
        let wide = Store::open(wide_dir.path(), wide).unwrap();
        let children = |n: usize| Request::Children {
            partition: 0,
            level: 0,
            parents: vec![0; n],
        };
        match answer(&wide, children(4), &Accept::Any).unwrap() {
            Response::Hashes(h) => assert_eq!(h.len(), 4 << 16),
            other => panic!("{other:?}"),
        }
        let err = answer(&wide, children(5), &Accept::Any).unwrap_err();
        assert!(err.to_string().contains("child hashes asked"), "{err}");
        // A partition the store does not hold is not written unless accepted.
        let repair = |key: &[u8]| proto::WireRepair {
            key: key.to_vec(),
            expected: None,
            record: (&crate::Record::value(1, b"v")).into(),
        };
        let refused = answer(
            &store,
            Request::Apply {
                partition: 9,
                repairs: vec![repair(b"k")],
            },
            &Accept::Existing,
        );
        assert!(refused.unwrap_err().to_string().contains("not served here"));
        assert_eq!(store.count_keys(9).unwrap(), 0);
        let listed = Accept::Listed([9].into_iter().collect());
        let applied = answer(
            &store,
            Request::Apply {
                partition: 9,
                repairs: vec![repair(b"k")],
            },
            &listed,
        )
        .unwrap();
        assert!(matches!(applied, Response::Applied { written: 1, .. }));
    }

    #[test]
    fn node_numbers_past_the_tree_are_refused_without_panicking() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Options::default()).unwrap();
        store.partition(0).put(b"k", b"v").unwrap();
        store.sync_index().unwrap();
        let levels = store.shape().levels;
        let requests = [
            // Runs that would count past u64::MAX, at an upper level and the segments.
            Request::Descend {
                partition: 0,
                level: 1,
                runs: vec![(u64::MAX, vec![[1u8; 16]; 2])],
            },
            Request::Descend {
                partition: 0,
                level: levels,
                runs: vec![(u64::MAX - 1, vec![[1u8; 16]; 3])],
            },
            Request::Descend {
                partition: 0,
                level: 2,
                runs: vec![(1 << 40, vec![[1u8; 16]])],
            },
            // Parents whose children are past the tree, or past u64::MAX.
            Request::Children {
                partition: 0,
                level: 1,
                parents: vec![u64::MAX],
            },
            Request::Children {
                partition: 0,
                level: levels - 1,
                parents: vec![1 << 40],
            },
            Request::Children {
                partition: 0,
                level: levels,
                parents: vec![0],
            },
        ];
        for request in requests {
            let shown = format!("{request:?}");
            let err = answer(&store, request, &Accept::Any).unwrap_err();
            assert!(
                err.to_string().contains("past") || err.to_string().contains("no children"),
                "{shown}: {err}"
            );
        }
    }
}
