//! The manager's status in the Prometheus text exposition format (version 0.0.4), for a
//! node to serve at `/metrics`.

use std::fmt::Write;

use super::Status;

impl Status {
    /// The status as Prometheus metrics: one family per quantity, labelled by peer
    /// and partition; a quantity not known yet (no exchange so far, no cap) is left out.
    pub fn to_prometheus(&self) -> String {
        let mut out = String::new();
        let mut family = |name: &str, kind: &str, help: &str, samples: Vec<(String, f64)>| {
            let _ = writeln!(out, "# HELP merkle_index_{name} {help}");
            let _ = writeln!(out, "# TYPE merkle_index_{name} {kind}");
            for (labels, value) in samples {
                let _ = writeln!(out, "merkle_index_{name}{labels} {value}");
            }
        };
        family(
            "exchanges_total",
            "counter",
            "Exchanges finished since the manager started, successful or not.",
            vec![(String::new(), self.exchanges as f64)],
        );
        family(
            "foreground_writes_per_second",
            "gauge",
            "Foreground writes per second, as last measured while repairs ran.",
            vec![(String::new(), self.foreground_writes_per_sec as f64)],
        );
        for (name, help, value) in [
            (
                "scrub_checked_keys_total",
                "Records the background scrub checked.",
                self.scrub.checked,
            ),
            (
                "scrub_passes_total",
                "Full passes of the background scrub over the store.",
                self.scrub.passes,
            ),
            (
                "scrub_problems_total",
                "Problems the background scrub found (see the status for the last).",
                self.scrub.problems,
            ),
            (
                "scrub_quarantined_total",
                "Bad records the background scrub quarantined for an exchange to restore.",
                self.scrub.quarantined,
            ),
            (
                "scrub_purged_tombstones_total",
                "Tombstones the background scrub purged (held past tombstone_grace).",
                self.scrub.purged,
            ),
        ] {
            family(name, "counter", help, vec![(String::new(), value as f64)]);
        }
        family(
            "store_checkpoint_failing",
            "gauge",
            "1 while the store's checkpoints fail (see the status for why), else 0.",
            vec![(
                String::new(),
                f64::from(u8::from(self.store_checkpoint_error.is_some())),
            )],
        );
        family(
            "wall_clock_moved_seconds",
            "gauge",
            "How far the wall clock has moved from the monotonic clock since the process started (past 60 s either way, purges and peer absences follow the monotonic clock).",
            vec![(String::new(), self.wall_clock_moved_ms as f64 / 1000.0)],
        );
        family(
            "repair_keys_per_second_allowed",
            "gauge",
            "The repair rate allowed now (absent: unlimited).",
            self.repair_keys_per_sec_now
                .map(|r| (String::new(), r as f64))
                .into_iter()
                .collect(),
        );
        let peers = |value: &dyn Fn(&super::PeerStatus) -> f64| {
            self.peers
                .iter()
                .map(|p| (labels(&[("peer", &p.name)]), value(p)))
                .collect::<Vec<_>>()
        };
        family(
            "peer_failures",
            "gauge",
            "Consecutive failed exchanges with the peer.",
            peers(&|p| f64::from(p.failures)),
        );
        family(
            "peer_held",
            "gauge",
            "1 while the peer is held: out of reach for longer than tombstone_grace, not exchanged with until wiped or added again.",
            peers(&|p| f64::from(u8::from(p.held))),
        );
        family(
            "peer_last_exchange_timestamp_seconds",
            "gauge",
            "When the last exchange with the peer succeeded (unix seconds; kept across restarts).",
            self.peers
                .iter()
                .filter_map(|p| {
                    let ms = p.last_exchange_unix_ms?;
                    Some((labels(&[("peer", &p.name)]), ms as f64 / 1000.0))
                })
                .collect(),
        );
        family(
            "peer_partitions_left_out",
            "gauge",
            "Partitions the peer holds that its last exchange left out (max_partitions).",
            peers(&|p| p.left_out as f64),
        );
        family(
            "peer_exchange_running",
            "gauge",
            "1 while an exchange with the peer runs.",
            peers(&|p| f64::from(u8::from(p.running.is_some()))),
        );
        family(
            "peer_next_exchange_seconds",
            "gauge",
            "Time until the next exchange with the peer is due.",
            peers(&|p| p.next_in.as_secs_f64()),
        );
        let per_partition = |value: &dyn Fn(&super::PartitionStatus) -> Option<f64>| {
            let mut samples = Vec::new();
            for p in &self.peers {
                for s in &p.partitions {
                    if let Some(v) = value(s) {
                        let partition = s.partition.to_string();
                        samples.push((labels(&[("peer", &p.name), ("partition", &partition)]), v));
                    }
                }
            }
            samples
        };
        family(
            "last_success_timestamp_seconds",
            "gauge",
            "When the last successful exchange of the partition ended (unix time).",
            per_partition(&|s| s.last_success_unix_ms.map(|ms| ms as f64 / 1000.0)),
        );
        family(
            "last_exchange_duration_seconds",
            "gauge",
            "How long the last successful exchange of the partition took.",
            per_partition(&|s| s.last_duration.map(|d| d.as_secs_f64())),
        );
        family(
            "last_exchange_differences",
            "gauge",
            "Keys found different by the last successful exchange of the partition.",
            per_partition(&|s| Some(s.differences as f64)),
        );
        family(
            "last_exchange_refused",
            "gauge",
            "Repairs the last successful exchange of the partition could not write: a version too far ahead of a clock, or bytes not matching their hash.",
            per_partition(&|s| Some(s.refused as f64)),
        );
        family(
            "last_exchange_corrupt",
            "gauge",
            "Corrupt records the last successful exchange of the partition found on either side.",
            per_partition(&|s| Some(s.corrupt as f64)),
        );
        family(
            "last_exchange_expired",
            "gauge",
            "Tombstones past tombstone_grace the last successful exchange of the partition did not copy to a side without the key.",
            per_partition(&|s| Some(s.expired as f64)),
        );
        family(
            "last_exchange_bytes",
            "gauge",
            "Payload and repair bytes of the last successful exchange of the partition.",
            per_partition(&|s| Some(s.bytes as f64)),
        );
        family(
            "repaired_local_keys_total",
            "counter",
            "Keys written on this node by exchanges of the partition.",
            per_partition(&|s| Some(s.total_repaired_local as f64)),
        );
        family(
            "repaired_remote_keys_total",
            "counter",
            "Keys written on the peer by exchanges of the partition.",
            per_partition(&|s| Some(s.total_repaired_remote as f64)),
        );
        family(
            "exchange_errors_total",
            "counter",
            "Failed exchanges of the partition.",
            per_partition(&|s| Some(s.errors as f64)),
        );
        out
    }
}

/// `{name="value",...}`, values escaped as the format requires (backslash, quote,
/// newline).
fn labels(pairs: &[(&str, &str)]) -> String {
    let mut out = String::from("{");
    for (i, (name, value)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(name);
        out.push_str("=\"");
        for c in value.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                '\n' => out.push_str("\\n"),
                c => out.push(c),
            }
        }
        out.push('"');
    }
    out.push('}');
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{PartitionStatus, PeerStatus};

    #[test]
    fn every_sample_line_parses_and_names_are_escaped() {
        let status = Status {
            peers: vec![PeerStatus {
                name: "10.0.0.1:7070 \"a\\b\"\n".into(),
                partitions: vec![
                    PartitionStatus {
                        partition: 3,
                        last_success_unix_ms: Some(1_500),
                        last_duration: Some(Duration::from_millis(250)),
                        differences: 4,
                        total_repaired_local: 7,
                        ..PartitionStatus::default()
                    },
                    PartitionStatus {
                        partition: 4,
                        ..PartitionStatus::default()
                    },
                ],
                left_out: 12,
                last_exchange_unix_ms: Some(2_500),
                ..PeerStatus::default()
            }],
            exchanges: 9,
            repair_keys_per_sec_now: Some(500),
            store_checkpoint_error: Some("disk full".into()),
            wall_clock_moved_ms: -86_400_000,
            scrub: crate::ScrubStatus {
                quarantined: 3,
                ..Default::default()
            },
            ..Status::default()
        };
        let text = status.to_prometheus();
        let peer = r#"peer="10.0.0.1:7070 \"a\\b\"\n""#;
        for expected in [
            "merkle_index_exchanges_total 9".to_string(),
            "merkle_index_repair_keys_per_second_allowed 500".to_string(),
            "merkle_index_store_checkpoint_failing 1".to_string(),
            "merkle_index_wall_clock_moved_seconds -86400".to_string(),
            "merkle_index_scrub_quarantined_total 3".to_string(),
            format!("merkle_index_last_success_timestamp_seconds{{{peer},partition=\"3\"}} 1.5"),
            format!("merkle_index_last_exchange_duration_seconds{{{peer},partition=\"3\"}} 0.25"),
            format!("merkle_index_repaired_local_keys_total{{{peer},partition=\"3\"}} 7"),
            format!("merkle_index_last_exchange_differences{{{peer},partition=\"4\"}} 0"),
            format!("merkle_index_peer_partitions_left_out{{{peer}}} 12"),
            format!("merkle_index_peer_last_exchange_timestamp_seconds{{{peer}}} 2.5"),
        ] {
            assert!(
                text.lines().any(|l| l == expected),
                "{expected} not in\n{text}"
            );
        }
        // Partition 4 has never succeeded: no timestamp for it.
        assert!(!text.contains(
            "timestamp_seconds{peer=\"10.0.0.1:7070 \\\"a\\\\b\\\"\\n\",partition=\"4\"}"
        ));
        // Every line is a comment or `name{labels} value` with a number for the value,
        // and no raw newline or quote breaks a label.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (_, value) = line.rsplit_once(' ').unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
            assert!(line.starts_with("merkle_index_"), "{line}");
        }
    }
}
