//! What the load generator asks for: which operation, on which key.
//!
//! The same [`Workload`] drives every target, so TinkerDB and its peer see
//! the same sequence shape: an operation mix (YCSB A/B/C, write-only,
//! read-only) and a key distribution (uniform or zipfian over `keys` keys).

use clap::ValueEnum;
use serde::Serialize;

/// Operation mix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mix {
    /// 100% SET.
    Set,
    /// 100% GET.
    Get,
    /// YCSB A: 50% reads, 50% updates.
    A,
    /// YCSB B: 95% reads, 5% updates.
    B,
    /// YCSB C: 100% reads.
    C,
}

impl Mix {
    /// Share of reads, in percent.
    pub fn read_percent(self) -> u32 {
        match self {
            Mix::Set => 0,
            Mix::Get | Mix::C => 100,
            Mix::A => 50,
            Mix::B => 95,
        }
    }

    /// Do reads need the keys to exist beforehand?
    pub fn needs_preload(self) -> bool {
        self.read_percent() > 0
    }
}

/// Key distribution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Distribution {
    /// Every key equally likely.
    Uniform,
    /// YCSB's zipfian (theta 0.99): a few keys are hot.
    Zipfian,
}

/// One operation to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Read key number n.
    Get(u64),
    /// Write key number n.
    Set(u64),
}

/// A small, fast, seedable generator (xorshift64*), one per connection.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// Seeded generator (seed 0 is replaced).
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// YCSB's zipfian generator (Gray et al., "Quickly generating billion-record
/// synthetic databases"), with item 0 the hottest; keys are then scrambled
/// by a hash so hot keys spread over slots and cores.
#[derive(Debug, Clone)]
pub struct Zipfian {
    items: u64,
    theta: f64,
    alpha: f64,
    zeta_n: f64,
    eta: f64,
}

impl Zipfian {
    /// A generator over `items` items with YCSB's theta 0.99.
    pub fn new(items: u64) -> Zipfian {
        let theta = 0.99;
        let zeta = |n: u64| (1..=n).map(|i| 1.0 / (i as f64).powf(theta)).sum::<f64>();
        let zeta_n = zeta(items);
        let zeta_2 = zeta(2);
        let alpha = 1.0 / (1.0 - theta);
        let eta = (1.0 - (2.0 / items as f64).powf(1.0 - theta)) / (1.0 - zeta_2 / zeta_n);
        Zipfian {
            items,
            theta,
            alpha,
            zeta_n,
            eta,
        }
    }

    /// Next item, hottest first.
    pub fn next(&self, rng: &mut Rng) -> u64 {
        let u = rng.next_f64();
        let uz = u * self.zeta_n;
        if uz < 1.0 {
            return 0;
        }
        if uz < 1.0 + 0.5f64.powf(self.theta) {
            return 1;
        }
        let item = (self.items as f64 * (self.eta * u - self.eta + 1.0).powf(self.alpha)) as u64;
        item.min(self.items - 1)
    }
}

/// The operation stream of one connection.
#[derive(Debug, Clone)]
pub struct Workload {
    mix: Mix,
    keys: u64,
    zipfian: Option<Zipfian>,
    rng: Rng,
}

impl Workload {
    /// A stream for connection number `seed`.
    pub fn new(mix: Mix, distribution: Distribution, keys: u64, seed: u64) -> Workload {
        Workload {
            mix,
            keys,
            zipfian: (distribution == Distribution::Zipfian).then(|| Zipfian::new(keys)),
            rng: Rng::new(seed),
        }
    }

    /// The next operation.
    pub fn next_op(&mut self) -> Op {
        let key = match &self.zipfian {
            // Scramble so the hot keys are not neighbours.
            Some(zipfian) => fnv_scramble(zipfian.next(&mut self.rng)) % self.keys,
            None => self.rng.next_u64() % self.keys,
        };
        if (self.rng.next_u64() % 100) < u64::from(self.mix.read_percent()) {
            Op::Get(key)
        } else {
            Op::Set(key)
        }
    }
}

fn fnv_scramble(item: u64) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for byte in item.to_le_bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// The key bytes of key number `n` (fixed width, like redis-benchmark's).
pub fn key_name(n: u64, out: &mut Vec<u8>) {
    use std::io::Write;
    out.clear();
    write!(out, "key:{n:012}").expect("write to a Vec");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zipfian_is_skewed_and_in_range() {
        let zipfian = Zipfian::new(1000);
        let mut rng = Rng::new(7);
        let mut hits = vec![0u32; 1000];
        for _ in 0..100_000 {
            hits[zipfian.next(&mut rng) as usize] += 1;
        }
        assert!(hits[0] > hits[10] && hits[10] > hits[500]);
        assert!(
            hits[0] > 10_000,
            "item 0 should take over 10% ({})",
            hits[0]
        );
    }

    #[test]
    fn mixes_have_their_read_share() {
        let mut workload = Workload::new(Mix::B, Distribution::Uniform, 100, 1);
        let reads = (0..10_000)
            .filter(|_| matches!(workload.next_op(), Op::Get(_)))
            .count();
        assert!((9300..9700).contains(&reads), "{reads}");
    }
}
