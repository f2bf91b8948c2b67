//! The order transformers' `Trainer` (through accelerate) reads a training set in, bit for bit.
//!
//! - `train_sampling_strategy = "random"` (DPO's default): accelerate's `SeedableRandomSampler`
//!   reseeds a torch CPU generator with `data_seed + epoch` (`data_seed` defaults to `seed`) at
//!   the start of every epoch and takes `torch.randperm(n)`.
//! - `"sequential"` (KTO's default, and the only order KTO's mismatched pairs allow): file order.
//! - Batches never straddle an epoch; the last one is short, or dropped with `dataloader_drop_last`.
//! - Optimizer steps take `gradient_accumulation_steps` batches, except the last step of an epoch,
//!   which takes what is left (transformers' `num_update_steps_per_epoch` rounds up).

use serde::{Deserialize, Serialize};

use crate::config::{RunConfig, SamplingStrategy};

/// Where the data loader stands: which epoch, and how many examples of it were consumed.
/// Together with the seed this fully determines every later batch, so it is all a
/// checkpoint needs to resume the data stream exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DataCursor {
    pub epoch: u64,
    pub offset: usize,
}

/// `torch.randperm` on the CPU uses its swap shuffle below this size and another algorithm above
/// it (64-bit draws); datasets that large are not supported.
pub const TORCH_RANDPERM_MAX: usize = (u32::MAX / 20) as usize;

/// torch's CPU generator (`at::mt19937`): the 32-bit Mersenne Twister, seeded as
/// `torch.Generator().manual_seed(seed)` seeds it (the low 32 bits of the seed).
#[derive(Clone)]
pub struct TorchGenerator {
    state: [u32; 624],
    next: usize,
}

impl std::fmt::Debug for TorchGenerator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TorchGenerator").field("next", &self.next).finish_non_exhaustive()
    }
}

impl TorchGenerator {
    const N: usize = 624;
    const M: usize = 397;

    pub fn manual_seed(seed: u64) -> Self {
        let mut state = [0u32; Self::N];
        state[0] = seed as u32;
        for j in 1..Self::N {
            let prev = state[j - 1];
            state[j] = 1_812_433_253u32.wrapping_mul(prev ^ (prev >> 30)).wrapping_add(j as u32);
        }
        Self { state, next: Self::N }
    }

    /// `generator->random()`: the next 32-bit output.
    pub fn random(&mut self) -> u32 {
        if self.next >= Self::N {
            self.twist();
        }
        let mut y = self.state[self.next];
        self.next += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    fn twist(&mut self) {
        for i in 0..Self::N {
            let y = (self.state[i] & 0x8000_0000) | (self.state[(i + 1) % Self::N] & 0x7fff_ffff);
            let mut v = self.state[(i + Self::M) % Self::N] ^ (y >> 1);
            if y & 1 != 0 {
                v ^= 0x9908_b0df;
            }
            self.state[i] = v;
        }
        self.next = 0;
    }

    /// `torch.randperm(n, generator=self)` on the CPU, for `n < TORCH_RANDPERM_MAX`.
    pub fn randperm(&mut self, n: usize) -> Vec<usize> {
        assert!(n < TORCH_RANDPERM_MAX, "torch.randperm uses another algorithm for n >= {TORCH_RANDPERM_MAX}");
        let mut perm: Vec<usize> = (0..n).collect();
        for i in 0..n.saturating_sub(1) {
            let z = (u64::from(self.random()) % (n - i) as u64) as usize;
            perm.swap(i, i + z);
        }
        perm
    }
}

/// Yields the micro-batches of each optimizer step, as transformers' training loop takes them.
#[derive(Debug, Clone)]
pub struct BatchSampler {
    len: usize,
    batch_size: usize,
    drop_last: bool,
    strategy: SamplingStrategy,
    data_seed: u64,
    cursor: DataCursor,
    order: Vec<usize>,
}

impl BatchSampler {
    /// The sampler a run of `cfg` over `len` rows uses, from `cursor` on: what the training loop
    /// builds, and what the parity tests check against TRL's loader.
    pub fn for_run(cfg: &RunConfig, len: usize, cursor: DataCursor) -> Self {
        Self::new(
            len,
            cfg.per_device_train_batch_size,
            cfg.dataloader_drop_last,
            cfg.sampling_strategy(),
            cfg.data_order_seed(),
            cursor,
        )
    }

    pub fn new(
        len: usize,
        batch_size: usize,
        drop_last: bool,
        strategy: SamplingStrategy,
        data_seed: u64,
        cursor: DataCursor,
    ) -> Self {
        let mut s = Self { len, batch_size, drop_last, strategy, data_seed, cursor, order: Vec::new() };
        s.order = s.epoch_order(cursor.epoch);
        s
    }

    fn epoch_order(&self, epoch: u64) -> Vec<usize> {
        match self.strategy {
            SamplingStrategy::Sequential => (0..self.len).collect(),
            SamplingStrategy::Random => {
                TorchGenerator::manual_seed(self.data_seed.wrapping_add(epoch)).randperm(self.len)
            }
        }
    }

    pub fn cursor(&self) -> DataCursor {
        self.cursor
    }

    /// Batches per epoch (`len(train_dataloader)`).
    pub fn batches_per_epoch(&self) -> usize {
        batches_per_epoch(self.len, self.batch_size, self.drop_last)
    }

    /// Batches of the current epoch already taken.
    pub fn batches_taken(&self) -> usize {
        self.cursor.offset.div_ceil(self.batch_size)
    }

    /// transformers' `epoch` after the batches taken so far: `epoch + batches / batches_per_epoch`.
    pub fn fractional_epoch(&self) -> f64 {
        self.cursor.epoch as f64 + self.batches_taken() as f64 / self.batches_per_epoch().max(1) as f64
    }

    /// The micro-batches of the next optimizer step: `accumulation` batches, or the rest of
    /// the epoch when fewer are left. Steps never straddle an epoch.
    pub fn next_step(&mut self, accumulation: usize) -> Vec<Vec<usize>> {
        if self.batches_taken() >= self.batches_per_epoch() {
            self.cursor = DataCursor { epoch: self.cursor.epoch + 1, offset: 0 };
            self.order = self.epoch_order(self.cursor.epoch);
        }
        let take = accumulation.min(self.batches_per_epoch() - self.batches_taken());
        (0..take)
            .map(|_| {
                let end = (self.cursor.offset + self.batch_size).min(self.len);
                let batch = self.order[self.cursor.offset..end].to_vec();
                self.cursor.offset = end;
                batch
            })
            .collect()
    }
}

/// `len(train_dataloader)`.
pub fn batches_per_epoch(len: usize, batch_size: usize, drop_last: bool) -> usize {
    if drop_last {
        len / batch_size
    } else {
        len.div_ceil(batch_size)
    }
}

/// transformers' `num_update_steps_per_epoch`: optimizer steps per epoch, the last one taking
/// the batches that are left.
pub fn updates_per_epoch(batches: usize, accumulation: usize) -> usize {
    batches.div_ceil(accumulation).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generator_is_the_reference_mersenne_twister() {
        // mt19937's published check: the 10,000th output for the default seed 5489 is 4123659995.
        let mut g = TorchGenerator::manual_seed(5489);
        let last = (0..10_000).map(|_| g.random()).last();
        assert_eq!(last, Some(4_123_659_995));
    }

    #[test]
    fn a_random_epoch_is_torch_randperm_seeded_with_data_seed_plus_epoch() {
        // What TRL 1.16 read for 12 examples with seed 0 (trl-parity-ext/shuffle-epochs).
        let mut s = BatchSampler::new(12, 4, false, SamplingStrategy::Random, 0, DataCursor::default());
        let batches: Vec<Vec<usize>> = (0..6).flat_map(|_| s.next_step(1)).collect();
        assert_eq!(batches[..3].concat(), vec![8, 0, 5, 9, 7, 4, 2, 10, 3, 1, 11, 6]);
        assert_eq!(batches[3..].concat(), vec![1, 4, 6, 8, 11, 0, 5, 3, 2, 9, 10, 7]);
    }

    #[test]
    fn accumulation_takes_the_short_last_group_of_each_epoch() {
        // 10 examples, batch 2: 5 batches per epoch, groups of 3 then 2.
        let mut s = BatchSampler::new(10, 2, false, SamplingStrategy::Sequential, 0, DataCursor::default());
        let sizes: Vec<usize> = (0..4).map(|_| s.next_step(3).len()).collect();
        assert_eq!(sizes, vec![3, 2, 3, 2]);
        assert_eq!(updates_per_epoch(batches_per_epoch(10, 2, false), 3), 2);
    }

    #[test]
    fn drop_last_drops_the_short_batch_and_resumes_exactly() {
        let mut s = BatchSampler::new(10, 4, true, SamplingStrategy::Random, 7, DataCursor::default());
        let first: Vec<Vec<usize>> = (0..3).flat_map(|_| s.next_step(1)).collect();
        assert!(first.iter().all(|b| b.len() == 4));
        assert_eq!(s.cursor(), DataCursor { epoch: 1, offset: 4 });
        let cursor = s.cursor();
        let next: Vec<Vec<usize>> = (0..3).flat_map(|_| s.next_step(1)).collect();
        let mut resumed = BatchSampler::new(10, 4, true, SamplingStrategy::Random, 7, cursor);
        let again: Vec<Vec<usize>> = (0..3).flat_map(|_| resumed.next_step(1)).collect();
        assert_eq!(next, again);
    }

    #[test]
    fn the_logged_epoch_counts_batches_as_transformers_does() {
        let mut s = BatchSampler::new(10, 4, false, SamplingStrategy::Sequential, 0, DataCursor::default());
        s.next_step(1);
        assert!((s.fractional_epoch() - 1.0 / 3.0).abs() < 1e-12);
        s.next_step(2);
        assert_eq!(s.fractional_epoch(), 1.0);
    }
}
