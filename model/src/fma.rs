//! `fmaf` (x·y + z with one rounding, IEEE 754-2019 §5.4.1 fusedMultiplyAdd, round to nearest even) in integer
//! arithmetic, for the portable kernels' exact models of llama.cpp's FMA chains (f16 dot products, `expf`).
//!
//! Why not `libm::fmaf`: without hardware FMA it widens to f64 (two conversions, a multiply, an add, a rounding
//! check and a conversion back). Under QEMU's TCG, which the appliance's development loop runs on, every float
//! operation is a call into QEMU's software floating point, so that costs ~100 ns, against ~15 ns for a plain
//! multiply and add; integer instructions run translated at near native speed. Measured with `qemu-x86_64` by
//! `model/examples/tcg_speed.rs fma`. The result equals `libm::fmaf` bit for bit (tests below, and against the
//! hardware instruction where the CPU has one). The common case (normal operands, a normal result) runs in 64-bit
//! integers with a sticky bit; subnormal or overflowing results in 128-bit ones; zeros, subnormal inputs,
//! infinities and NaNs, which the engine's data rarely holds, go to `libm::fmaf`.

/// x·y + z rounded once to nearest, ties to even.
#[inline]
pub fn fmaf(x: f32, y: f32, z: f32) -> f32 {
    let (xb, yb, zb) = (x.to_bits(), y.to_bits(), z.to_bits());
    let (ex, ey, ez) = (
        (xb >> 23 & 0xff) as i32,
        (yb >> 23 & 0xff) as i32,
        (zb >> 23 & 0xff) as i32,
    );
    if ex == 0 || ex == 0xff || ey == 0 || ey == 0xff || ez == 0 || ez == 0xff {
        return special(x, y, z);
    }
    // Both terms as integers with their top bit at 60 or 61 (x·y: 24-bit significands, so 2^46 <= mp < 2^48;
    // z: 24 bits), each with the exponent of its lowest bit. Their low bits are zero (14 and 37 of them).
    let p = (u64::from(xb & 0x7f_ffff | 0x80_0000) * u64::from(yb & 0x7f_ffff | 0x80_0000)) << 14;
    let q = u64::from(zb & 0x7f_ffff | 0x80_0000) << 37;
    let (lsb_p, lsb_q) = (ex + ey - 314, ez - 187);
    // The term with the lower exponent moves right to the other's; what falls off is kept as a set bit 0 (the
    // sticky bit). The kept term's bit 0 is zero, so the sum's bit 0 is then 1 and the sum lies strictly between
    // the same two rounding boundaries as the exact sum (boundaries are even: at least two bits are dropped
    // whenever anything fell off, since the sum then keeps 59 or more bits). A shift within the moved term's
    // zero low bits drops nothing.
    let (p, q, lsb) = if lsb_p >= lsb_q {
        (p, shift_right_sticky(q, lsb_p - lsb_q), lsb_p)
    } else {
        (shift_right_sticky(p, lsb_q - lsb_p), q, lsb_q)
    };
    // Each term is below 2^62, so the signed sum cannot overflow.
    let signed = |m: u64, negative: bool| if negative { -(m as i64) } else { m as i64 };
    let sum = signed(p, (xb ^ yb) >> 31 != 0) + signed(q, zb >> 31 != 0);
    if sum == 0 {
        return 0.0; // an exact zero sum is +0 when rounding to nearest (IEEE 754-2019 §6.3)
    }
    let magnitude = sum.unsigned_abs();
    let width = 64 - magnitude.leading_zeros() as i32;
    let biased = lsb + width - 1 + 127;
    if !(1..0xff).contains(&biased) {
        return wide(x, y, z); // a subnormal or overflowing result
    }
    let drop = width - 24;
    let kept = if drop <= 0 {
        magnitude << -drop
    } else {
        let kept = magnitude >> drop;
        let rest = magnitude & ((1 << drop) - 1);
        let half = 1 << (drop - 1);
        kept + u64::from(rest > half || (rest == half && kept & 1 == 1))
    };
    // Rounding may carry to 2^24: one more in the exponent, and the stored fraction is zero either way.
    let biased = biased + (kept >> 24) as i32;
    if biased >= 0xff {
        return wide(x, y, z);
    }
    let sign = (sum < 0) as u32;
    f32::from_bits(sign << 31 | (biased as u32) << 23 | (kept as u32 & 0x7f_ffff))
}

/// `v >> k` with every bit shifted out ORed into bit 0.
#[inline]
fn shift_right_sticky(v: u64, k: i32) -> u64 {
    if k >= 64 {
        u64::from(v != 0)
    } else {
        v >> k | u64::from(v & ((1 << k) - 1) != 0)
    }
}

/// A zero, subnormal, infinite or NaN operand: z = ±0 with normal x and y is the rounded product; the rest, which
/// the engine's data rarely holds, goes to libm.
fn special(x: f32, y: f32, z: f32) -> f32 {
    let normal = |v: f32| v.is_normal();
    if normal(x) && normal(y) && z == 0.0 {
        // x·y is not zero, so x·y ± 0 is x·y exactly, and one rounding of it is the f32 product.
        return x * y;
    }
    libm::fmaf(x, y, z)
}

/// The general case for normal x, y and z, in 128-bit integers: exact, including results that are subnormal or
/// overflow.
fn wide(x: f32, y: f32, z: f32) -> f32 {
    let (xb, yb, zb) = (x.to_bits(), y.to_bits(), z.to_bits());
    let (ex, ey, ez) = (
        (xb >> 23 & 0xff) as i32,
        (yb >> 23 & 0xff) as i32,
        (zb >> 23 & 0xff) as i32,
    );
    // x·y = mp · 2^(ex + ey - 300) exactly; z = mz · 2^(ez - 150).
    let mp = u64::from(xb & 0x7f_ffff | 0x80_0000) * u64::from(yb & 0x7f_ffff | 0x80_0000);
    let mz = u64::from(zb & 0x7f_ffff | 0x80_0000);
    let negative_p = (xb ^ yb) >> 31 != 0;
    let negative_z = zb >> 31 != 0;
    let signed = |m: u64, negative: bool| if negative { -(m as i128) } else { m as i128 };
    // How far z's lowest bit lies above the product's.
    let d = ez - ex - ey + 150;
    let (sum, lsb) = if d >= 0 {
        if d > 80 {
            // x·y < 2^48 units of its lowest bit, below 2^-32 of z's: it cannot move z's rounding (z itself is
            // representable, and the distance to a rounding boundary is at least a quarter of z's unit).
            return z;
        }
        (
            signed(mp, negative_p) + (signed(mz, negative_z) << d),
            ex + ey - 300,
        )
    } else if d >= -60 {
        (
            (signed(mp, negative_p) << -d) + signed(mz, negative_z),
            ez - 150,
        )
    } else {
        // z lies wholly below x·y's lowest bit (z < 2^(24+d) units of it, d < -60): it only breaks a tie or
        // pulls an exact product off a representable value, never past the next one, so a single unit two places
        // below x·y's lowest bit, with z's sign, rounds the same way.
        (
            (signed(mp, negative_p) << 2) + signed(1, negative_z),
            ex + ey - 302,
        )
    };
    if sum == 0 {
        return 0.0;
    }
    round(sum < 0, sum.unsigned_abs(), lsb)
}

/// The f32 nearest to `magnitude` · 2^`lsb` (ties to even), negated if `negative`.
fn round(negative: bool, magnitude: u128, lsb: i32) -> f32 {
    let sign = u32::from(negative) << 31;
    let width = 128 - magnitude.leading_zeros() as i32;
    // Biased exponent if the result is normal: the top bit of `magnitude` is worth 2^(lsb + width - 1).
    let biased = lsb + width - 1 + 127;
    // Bits to drop: down to 24 significant bits, or fewer for a subnormal result (whose unit is 2^-149).
    let drop = if biased >= 1 { width - 24 } else { -149 - lsb };
    let q = if drop <= 0 {
        (magnitude << -drop) as u64
    } else if drop >= 127 {
        0 // below half the smallest subnormal
    } else {
        let q = (magnitude >> drop) as u64;
        let rest = magnitude & ((1u128 << drop) - 1);
        let half = 1u128 << (drop - 1);
        if rest > half || (rest == half && q & 1 == 1) {
            q + 1
        } else {
            q
        }
    };
    if biased < 1 {
        // Subnormal, or the smallest normal if rounding carried into bit 23: the encoding is q itself.
        return f32::from_bits(sign | q as u32);
    }
    // Rounding may carry to 2^24: one more in the exponent, and the stored fraction is zero either way.
    let biased = biased + (q >> 24) as i32;
    if biased >= 0xff {
        return f32::from_bits(sign | 0x7f80_0000);
    }
    f32::from_bits(sign | (biased as u32) << 23 | (q as u32 & 0x7f_ffff))
}

#[cfg(test)]
mod tests {
    use super::fmaf;

    /// xorshift64*: deterministic, so a failure can be replayed.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn f32_any(&mut self) -> f32 {
            f32::from_bits(self.next() as u32)
        }

        /// Exponents near 1, as the engine's data has.
        fn f32_near_one(&mut self) -> f32 {
            let bits = self.next() as u32;
            f32::from_bits(bits & 0x807f_ffff | (110 + (bits >> 8) % 36) << 23)
        }
    }

    fn check(x: f32, y: f32, z: f32) {
        let want = libm::fmaf(x, y, z);
        let got = fmaf(x, y, z);
        assert!(
            got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
            "fmaf({x:e}, {y:e}, {z:e}) = {got:e} ({:#x}), libm says {want:e} ({:#x})",
            got.to_bits(),
            want.to_bits()
        );
    }

    #[test]
    fn equals_libm_on_random_bit_patterns() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..2_000_000 {
            check(rng.f32_any(), rng.f32_any(), rng.f32_any());
        }
    }

    #[test]
    fn equals_libm_on_the_engines_kind_of_values() {
        let mut rng = Rng(0x0123_4567_89ab_cdef);
        for _ in 0..2_000_000 {
            check(rng.f32_near_one(), rng.f32_near_one(), rng.f32_near_one());
        }
    }

    #[test]
    fn equals_libm_near_cancellation_and_ties() {
        let mut rng = Rng(42);
        for _ in 0..1_000_000 {
            let (x, y) = (rng.f32_near_one(), rng.f32_near_one());
            let p = x * y;
            // z cancels the product to within a few units, or sits half a unit off it.
            let nudge = (rng.next() % 7) as i32 - 3;
            let z = -f32::from_bits((p.to_bits() as i32 + nudge) as u32);
            check(x, y, z);
            let tiny = f32::from_bits(
                p.to_bits() & 0x8000_0000 | (p.to_bits() >> 23 & 0xff).saturating_sub(24) << 23,
            );
            check(x, y, tiny);
            check(x, y, -tiny);
            // z far above and far below the product.
            check(x, y, p * 1e20);
            check(x, y, p * 1e-20);
            check(x, y, -p * 1e-20);
        }
    }

    /// `quant::fma_f16` (a multiply and an add) is an FMA for every f16 pair: every first operand, including
    /// subnormals, infinities and NaNs, against random second operands and accumulators.
    #[test]
    fn an_f16_product_plus_an_accumulator_is_an_fma() {
        let mut rng = Rng(0x5eed);
        let h = |v: u16| half::f16::from_bits(v).to_f32();
        for a in 0..=u16::MAX {
            for _ in 0..64 {
                let b = rng.next() as u16;
                let acc = if rng.next() & 1 == 0 {
                    rng.f32_near_one()
                } else {
                    rng.f32_any()
                };
                let want = libm::fmaf(h(a), h(b), acc);
                let got = crate::quant::fma_f16(a, b, acc);
                assert!(
                    got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
                    "f16 {a:#x} * {b:#x} + {acc:e}: {got:e}, fmaf {want:e}"
                );
            }
        }
    }

    #[test]
    fn edge_values() {
        let values = [
            0.0,
            -0.0,
            1.0,
            -1.0,
            f32::MIN_POSITIVE,
            -f32::MIN_POSITIVE,
            f32::from_bits(1),
            f32::from_bits(0x807f_ffff),
            f32::MAX,
            f32::MIN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            f32::EPSILON,
            1.0 + f32::EPSILON,
            1.0 - f32::EPSILON / 2.0,
            3.0e38,
            1.0e-38,
            0.5,
            2.0,
        ];
        for &x in &values {
            for &y in &values {
                for &z in &values {
                    check(x, y, z);
                }
            }
        }
    }

    #[test]
    fn equals_the_hardware_instruction_where_there_is_one() {
        if !std::is_x86_feature_detected!("fma") {
            eprintln!("no FMA instruction on this CPU; checked against libm only");
            return;
        }
        let mut rng = Rng(7);
        for _ in 0..1_000_000 {
            let (x, y, z) = (rng.f32_near_one(), rng.f32_near_one(), rng.f32_any());
            // `mul_add` is the FMA instruction when the CPU has one (glibc's fmaf dispatches to it).
            let want = x.mul_add(y, z);
            let got = fmaf(x, y, z);
            assert!(got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()));
        }
    }
}
