//! Iterating one partition's records.

use crate::error::Result;
use crate::record::{split_data_key, Record};

/// Every record stored in one partition with its key, tombstones included (see
/// [`Partition::records`](crate::Partition::records)).
pub struct Records {
    pub(super) scan: sled::Iter,
    pub(super) partition: u32,
}

impl Iterator for Records {
    type Item = Result<(Vec<u8>, Record)>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let (k, v) = match self.scan.next()? {
                Ok(kv) => kv,
                Err(e) => return Some(Err(e.into())),
            };
            let Some((_, segment, key)) = split_data_key(&k) else {
                continue; // too short to be a record of this partition
            };
            let partition = self.partition;
            let decoded = Record::decode(&v, || format!("partition {partition} segment {segment}"));
            return Some(match decoded {
                Ok(record) => Ok((key.to_vec(), record)),
                Err(e) => Err(e.into()),
            });
        }
    }
}
