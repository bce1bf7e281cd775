//! Options for opening a store, and the tree shape they imply.

use std::time::Duration;

use crate::error::{Error, Result};

/// How to open (or create) a [`Store`](crate::Store).
///
/// `width`, `levels` and the hash size define the on-disk tree and are recorded in the
/// store; opening with different values is an [`Error::OptionsMismatch`]. The other
/// fields are run-time tuning and may change between opens.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Options {
    /// Fan-out of every interior node (default 16).
    pub width: u32,
    /// Levels below the root; each tree has `width.pow(levels)` segments
    /// (default 5, so 16^5 = 1,048,576 segments).
    pub levels: u32,
    /// Granularity of crash tracking (default 16): about how many keys a tracked region
    /// holds (a dense partition's regions are this many segments; a sparse partition's
    /// are wider, so they hold about as many keys). The first write to a region after a
    /// checkpoint costs one extra small sled insert; after a crash, each marked region is
    /// re-hashed from its keys. Smaller regions mean less recovery work and more marks.
    pub region_segments: u32,
    /// How often the hasher thread persists changed index buckets (default 30 s). Each
    /// checkpoint also restarts crash tracking, whose cost is one small insert per
    /// region written per interval: at most about `keys / region_segments` in all.
    pub checkpoint_interval: Duration,
    /// Capacity of the bounded channel in front of the hasher thread (default 16,384
    /// updates); a full channel makes writers wait.
    pub channel_capacity: usize,
    /// Page cache of the embedded sled database in bytes (default 512 MiB; sled's own
    /// default is 1 GiB). Below the size of the hot data, sled re-reads and re-decodes
    /// nodes on every write: with 1M keys of 100 bytes, 128 MiB halved put throughput.
    pub cache_bytes: u64,
    /// How far ahead of this node's wall clock a version from elsewhere (a caller's
    /// `put_versioned`, a repair from a replica) may be (default 1 hour). Further ahead
    /// is refused with [`Error::VersionAhead`]: accepting it would drag this store's
    /// clock along, so that later local writes lose to it. At most 365 days.
    pub max_clock_drift: Duration,
    /// Create the store if the directory is missing or empty (default true).
    pub create_if_missing: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            width: 16,
            levels: 5,
            region_segments: 16,
            checkpoint_interval: Duration::from_secs(30),
            channel_capacity: 16 * 1024,
            cache_bytes: 512 * 1024 * 1024,
            max_clock_drift: Duration::from_secs(3600),
            create_if_missing: true,
        }
    }
}

impl Options {
    /// Sets the tree shape from a segment count and a width; `segments` must be a power
    /// of `width`. A `region_segments` larger than the new segment count is lowered to it.
    pub fn with_segments(mut self, segments: u64, width: u32) -> Result<Self> {
        // The width's own limits first, so a bad width is named as such.
        Shape::new(width, 1)?;
        let mut levels = 0;
        let mut n = 1u64;
        while n < segments && width >= 2 {
            n = n.saturating_mul(u64::from(width));
            levels += 1;
        }
        if n != segments || levels == 0 {
            return Err(Error::InvalidOptions(format!(
                "segments ({segments}) must be a power of width ({width}), at least width"
            )));
        }
        self.width = width;
        self.levels = levels;
        self.region_segments = self
            .region_segments
            .min(u32::try_from(segments).unwrap_or(u32::MAX));
        Ok(self)
    }

    /// Sets `create_if_missing`.
    pub fn create_if_missing(mut self, create: bool) -> Self {
        self.create_if_missing = create;
        self
    }

    /// Sets the largest accepted clock drift of versions from elsewhere.
    pub fn max_clock_drift(mut self, drift: Duration) -> Self {
        self.max_clock_drift = drift;
        self
    }

    /// Sets the checkpoint interval.
    pub fn checkpoint_interval(mut self, interval: Duration) -> Self {
        self.checkpoint_interval = interval;
        self
    }

    pub(crate) fn shape(&self) -> Result<Shape> {
        Shape::new(self.width, self.levels)
    }

    pub(crate) fn validate(&self) -> Result<Shape> {
        let shape = self.shape()?;
        if self.region_segments == 0 || u64::from(self.region_segments) > shape.segments {
            return Err(Error::InvalidOptions(format!(
                "region_segments ({}) must be between 1 and the segment count ({})",
                self.region_segments, shape.segments
            )));
        }
        if self.channel_capacity == 0 {
            return Err(Error::InvalidOptions(
                "channel_capacity must be at least 1".into(),
            ));
        }
        if self.checkpoint_interval.is_zero() {
            return Err(Error::InvalidOptions(
                "checkpoint_interval must be positive".into(),
            ));
        }
        if self.max_clock_drift > MAX_CLOCK_DRIFT {
            return Err(Error::InvalidOptions(format!(
                "max_clock_drift ({:?}) must be at most 365 days",
                self.max_clock_drift
            )));
        }
        Ok(shape)
    }
}

const MAX_CLOCK_DRIFT: Duration = Duration::from_secs(365 * 24 * 3600);

/// The shape of every tree in a store: `levels` levels of `width`-way nodes below a root.
///
/// Level 0 is the root; level `d` has `width^d` nodes; level `levels` holds the segments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Fan-out of interior nodes.
    pub width: u32,
    /// Levels below the root (the segment level's number).
    pub levels: u32,
    /// Number of segments, `width^levels`.
    pub segments: u64,
}

impl Shape {
    /// Checks the limits: `2 <= width <= 65,536`, `1 <= levels`, `segments <= 2^32`.
    pub fn new(width: u32, levels: u32) -> Result<Shape> {
        if !(2..=65_536).contains(&width) {
            return Err(Error::InvalidOptions(format!(
                "width ({width}) must be between 2 and 65,536"
            )));
        }
        let segments = u64::from(width)
            .checked_pow(levels)
            .filter(|&s| levels >= 1 && s <= 1 << 32)
            .ok_or_else(|| {
                Error::InvalidOptions(format!(
                    "width^levels ({width}^{levels}) must be between width and 2^32 segments"
                ))
            })?;
        Ok(Shape {
            width,
            levels,
            segments,
        })
    }

    /// Number of nodes at `level`.
    pub fn nodes_at(&self, level: u32) -> u64 {
        u64::from(self.width).pow(level)
    }

    /// Nodes per persisted bucket: the smallest power of `width` that is at least 256,
    /// so buckets are a few KiB and a million-segment tree has a few thousand of them.
    pub fn bucket_nodes(&self) -> u64 {
        let mut n = u64::from(self.width);
        while n < 256 {
            n *= u64::from(self.width);
        }
        n
    }

    /// Nodes in each bucket of `level`: a whole level if it is smaller than a bucket.
    pub fn bucket_len(&self, level: u32) -> u64 {
        self.bucket_nodes().min(self.nodes_at(level))
    }

    /// Number of nodes in the whole tree, root included.
    pub fn total_nodes(&self) -> u64 {
        (0..=self.levels).map(|l| self.nodes_at(l)).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_a_million_segments() {
        let shape = Options::default().validate().unwrap();
        assert_eq!(shape.segments, 1 << 20);
        assert_eq!(shape.total_nodes(), 1_118_481);
    }

    #[test]
    fn with_segments_derives_levels_or_refuses() {
        let o = Options::default().with_segments(1024 * 1024, 1024).unwrap();
        assert_eq!((o.width, o.levels), (1024, 2));
        assert!(matches!(
            Options::default().with_segments(1000, 16),
            Err(Error::InvalidOptions(_))
        ));
        assert!(Options::default()
            .with_segments(1 << 33, 2)
            .unwrap()
            .validate()
            .is_err());
        assert!(Shape::new(1, 3).is_err());
        // A bad width is named as such, not as a segment count that is no power of it.
        for width in [0, 1, 65_537] {
            let Err(Error::InvalidOptions(why)) = Options::default().with_segments(16, width)
            else {
                panic!("width {width} accepted");
            };
            assert!(why.starts_with("width ("), "{why}");
        }
    }
}
