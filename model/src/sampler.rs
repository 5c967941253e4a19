//! Next-token selection: greedy argmax, or temperature → top-k → top-p sampling from a seeded generator, so the
//! same seed and logits always give the same token.
//!
//! Greedy ties go to the lowest id (llama.cpp's greedy sampler keeps the first maximum). The random source is
//! SplitMix64 (Steele, Lea, Flood: "Fast splittable pseudorandom number generators", OOPSLA 2014).

use alloc::vec::Vec;

/// Sampling parameters; `temperature <= 0` means greedy.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SamplerConfig {
    pub temperature: f32,
    /// Keep the k most likely tokens (0 = all).
    pub top_k: usize,
    /// Keep the smallest set whose probability reaches `top_p` (1.0 = all).
    pub top_p: f32,
    pub seed: u64,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        SamplerConfig {
            temperature: 0.0,
            top_k: 40,
            top_p: 0.95,
            seed: 0,
        }
    }
}

pub struct Sampler {
    config: SamplerConfig,
    state: u64,
    candidates: Vec<(f32, u32)>,
}

/// Index of the largest value (first on ties); 0 for an empty slice.
pub fn argmax(x: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best as u32
}

impl Sampler {
    /// A sampler whose candidate buffer is allocated once for `vocab_size` entries.
    pub fn new(config: SamplerConfig, vocab_size: usize) -> Sampler {
        Sampler {
            config,
            state: config.seed,
            candidates: Vec::with_capacity(vocab_size),
        }
    }

    /// Starts over with `config` (the generator restarts from its seed); the candidate buffer is kept.
    pub fn reconfigure(&mut self, config: SamplerConfig) {
        self.config = config;
        self.state = config.seed;
    }

    /// The parameters in use.
    pub fn config(&self) -> SamplerConfig {
        self.config
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        let c = self.config;
        if c.temperature <= 0.0 || logits.is_empty() {
            return argmax(logits);
        }
        self.candidates.clear();
        self.candidates
            .extend(logits.iter().enumerate().map(|(i, &l)| (l, i as u32)));
        let by_logit = |a: &(f32, u32), b: &(f32, u32)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
        if c.top_k > 0 && c.top_k < self.candidates.len() {
            self.candidates
                .select_nth_unstable_by(c.top_k - 1, by_logit);
            self.candidates.truncate(c.top_k);
        }
        self.candidates.sort_unstable_by(by_logit);
        let max = self.candidates[0].0;
        let mut sum = 0.0f32;
        for cand in self.candidates.iter_mut() {
            cand.0 = libm::expf((cand.0 - max) / c.temperature);
            sum += cand.0;
        }
        let mut keep = self.candidates.len();
        if c.top_p < 1.0 {
            let mut cum = 0.0;
            for (i, cand) in self.candidates.iter().enumerate() {
                cum += cand.0 / sum;
                if cum >= c.top_p {
                    keep = i + 1;
                    break;
                }
            }
        }
        let kept: f32 = self.candidates[..keep].iter().map(|c| c.0).sum();
        let mut r = self.next_f32() * kept;
        for cand in &self.candidates[..keep] {
            r -= cand.0;
            if r < 0.0 {
                return cand.1;
            }
        }
        self.candidates[keep - 1].1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_first_maximum() {
        let mut s = Sampler::new(
            SamplerConfig {
                temperature: 0.0,
                ..Default::default()
            },
            4,
        );
        assert_eq!(s.sample(&[0.0, 3.0, 3.0, -1.0]), 1);
    }

    #[test]
    fn same_seed_same_tokens_and_top_k_respected() {
        let logits: Vec<f32> = (0..100).map(|i| (i % 17) as f32 * 0.3).collect();
        let cfg = SamplerConfig {
            temperature: 1.0,
            top_k: 5,
            top_p: 1.0,
            seed: 42,
        };
        let run = |cfg| {
            let mut s = Sampler::new(cfg, 100);
            (0..50).map(|_| s.sample(&logits)).collect::<Vec<_>>()
        };
        let a = run(cfg);
        assert_eq!(a, run(cfg));
        assert_ne!(a, run(SamplerConfig { seed: 43, ..cfg }));
        // Top 5 logits are the ids with i % 17 == 16 (16, 33, 50, 67, 84).
        assert!(a.iter().all(|&t| t % 17 == 16), "{a:?}");
    }

    #[test]
    fn tiny_top_p_is_greedy() {
        let mut s = Sampler::new(
            SamplerConfig {
                temperature: 0.8,
                top_k: 0,
                top_p: 1e-6,
                seed: 1,
            },
            3,
        );
        for _ in 0..20 {
            assert_eq!(s.sample(&[1.0, 5.0, 2.0]), 1);
        }
    }
}
