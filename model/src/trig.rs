//! `sincosf` as glibc computes it on x86-64 with FMA, for RoPE: llama.cpp takes its rotation angles' cosines and
//! sines from the C library, and the engine must get the same f32s bit for bit (docs/ARCHITECTURE.md §6).
//!
//! glibc (2.28 and later; measured against 2.36's `libm.so.6`) evaluates single-precision sine and cosine in double
//! precision: the argument is reduced to r ∈ [-π/4, π/4] and quadrant n (one fused multiply-subtract below 120,
//! an exact fixed-point product with 192 bits of 2/π above), then degree-7 sine and degree-8 cosine polynomials in
//! r are summed and rounded to f32 once. Its x86-64 build picks, through an ifunc, a variant compiled with FMA on
//! every CPU with FMA and AVX2, where GCC fuses each `a + b·c` of the polynomials; that variant is the one mirrored
//! here, operation by operation. The `libm` crate's `sinf`/`cosf` (musl's algorithm) differ from it in the last
//! bit for about 1% of RoPE's angles, which moved llama.cpp's f16 keys and queries by one unit now and then.

/// The sine polynomial's coefficients s1..s3 and the cosine's c0..c4 (glibc's `__sincosf_table`; index 1 is the
/// negated cosine, used in quadrants 2 and 3 so that the sign comes free).
struct Poly {
    c: [f64; 5],
    s: [f64; 3],
}

const POLY: [Poly; 2] = [
    Poly {
        c: [
            1.0,
            f64::from_bits(0xbfdf_ffff_fd0c_621c), // -0x1.ffffffd0c621cp-2
            f64::from_bits(0x3fa5_5553_e106_8f19), // 0x1.55553e1068f19p-5
            f64::from_bits(0xbf56_c087_e89a_359d), // -0x1.6c087e89a359dp-10
            f64::from_bits(0x3ef9_9343_027b_f8c3), // 0x1.99343027bf8c3p-16
        ],
        s: [
            f64::from_bits(0xbfc5_5554_5995_a603), // -0x1.555545995a603p-3
            f64::from_bits(0x3f81_1076_0523_0bc4), // 0x1.1107605230bc4p-7
            f64::from_bits(0xbf29_94eb_3774_cf24), // -0x1.994eb3774cf24p-13
        ],
    },
    Poly {
        c: [
            -1.0,
            f64::from_bits(0x3fdf_ffff_fd0c_621c),
            f64::from_bits(0xbfa5_5553_e106_8f19),
            f64::from_bits(0x3f56_c087_e89a_359d),
            f64::from_bits(0xbef9_9343_027b_f8c3),
        ],
        s: [
            f64::from_bits(0xbfc5_5554_5995_a603),
            f64::from_bits(0x3f81_1076_0523_0bc4),
            f64::from_bits(0xbf29_94eb_3774_cf24),
        ],
    },
];

/// The sign of the sine in quadrants 0..3.
const SIGN: [f64; 4] = [1.0, -1.0, -1.0, 1.0];
/// 2/π · 2^24 (the fast reduction's quadrant comes out in the top 8 bits of an i32).
const HALF_PI_INV_2_24: f64 = f64::from_bits(0x4164_5f30_6dc9_c883); // 0x1.45F306DC9C883p+23
/// π/2.
const HALF_PI: f64 = core::f64::consts::FRAC_PI_2; // 0x1.921FB54442D18p0
/// π/2 · 2^-62: the large reduction's remainder is in quadrants with 62 fraction bits.
const HALF_PI_2_M62: f64 = f64::from_bits(0x3c19_21fb_5444_2d18); // 0x1.921FB54442D18p-62
/// The binary digits of 2/π, 192 of them (0.A2F9836E...), as bytes.
const TWO_OVER_PI: [u8; 24] = [
    0xa2, 0xf9, 0x83, 0x6e, 0x4e, 0x44, 0x15, 0x29, 0xfc, 0x27, 0x57, 0xd1, 0xf5, 0x34, 0xdd, 0xc0,
    0xdb, 0x62, 0x95, 0x99, 0x3c, 0x43, 0x90, 0x41,
];

/// The 32 bits of 2/π ending at byte `i` (fewer, high bits zero, for the first three).
fn two_over_pi_window(i: usize) -> u32 {
    (i.saturating_sub(3)..=i).fold(0u32, |w, k| (w << 8) | TWO_OVER_PI[k] as u32)
}

/// `abstop12` of glibc: the float's exponent bits and top mantissa bits, sign dropped.
fn abstop12(x: f32) -> u32 {
    (x.to_bits() >> 20) & 0x7ff
}

/// The polynomials at the reduced argument `x` (already signed for the quadrant), `x2` = x², as the FMA build
/// schedules them; returns (sine polynomial, cosine polynomial) rounded to f32.
fn poly(x: f64, x2: f64, p: &Poly) -> (f32, f32) {
    let fma = libm::fma;
    let s1 = fma(x2, p.s[2], p.s[1]);
    let c2 = fma(x2, p.c[4], p.c[3]);
    let x3 = x2 * x;
    let x4 = x2 * x2;
    let x5 = x2 * x3;
    let x6 = x2 * x4;
    let c1 = fma(x2, p.c[1], p.c[0]);
    let s = fma(x3, p.s[0], x);
    let c = fma(x4, p.c[2], c1);
    (fma(s1, x5, s) as f32, fma(c2, x6, c) as f32)
}

/// (sin x, cos x) as glibc's FMA `sincosf` returns them. NaN and infinities give NaN (glibc also sets errno).
pub fn sincosf(y: f32) -> (f32, f32) {
    let x = y as f64;
    let top = abstop12(y);
    if top < abstop12(core::f32::consts::FRAC_PI_4) {
        if top < abstop12(f32::from_bits(0x3980_0000)) {
            // |y| < 2^-12 (0x3980_0000): sin y rounds to y and cos y to 1.
            return (y, 1.0);
        }
        return poly(x, x * x, &POLY[0]);
    }
    let (r, n, quadrant) = if top < abstop12(120.0) {
        // One multiply-subtract with π/2 (55 bits) is accurate below 120; the quadrant is the rounded multiple.
        let scaled = x * HALF_PI_INV_2_24;
        let n = ((scaled as i32).wrapping_add(0x80_0000)) >> 24;
        (libm::fma(-(n as f64), HALF_PI, x), n, n)
    } else if top < abstop12(f32::INFINITY) {
        // The 24-bit mantissa times 96 bits of 2/π chosen by the exponent: the exact fixed-point remainder
        // (2 integer bits, 62 fraction bits), rounded to the nearest quadrant.
        let xi = y.to_bits();
        let at = ((xi >> 26) & 15) as usize;
        let shift = (xi >> 23) & 7;
        let m = ((xi & 0x00ff_ffff) | 0x80_0000) << shift;
        let lo = m.wrapping_mul(two_over_pi_window(at)) as u64;
        let mid = m as u64 * two_over_pi_window(at + 4) as u64;
        let hi = m as u64 * two_over_pi_window(at + 8) as u64;
        let mut fixed = ((hi >> 32) | (lo << 32)).wrapping_add(mid);
        let n = fixed.wrapping_add(1 << 61) >> 62;
        fixed = fixed.wrapping_sub(n << 62);
        let r = fixed as i64 as f64 * HALF_PI_2_M62;
        let sign = (xi >> 31) as i32;
        (r, n as i32, n as i32 + sign)
    } else {
        return (f32::NAN, f32::NAN);
    };
    let sign = SIGN[(quadrant & 3) as usize];
    let p = &POLY[((quadrant & 2) >> 1) as usize];
    let (s, c) = poly(r * sign, r * r, p);
    if n & 1 == 1 {
        (c, s)
    } else {
        (s, c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table of 2/π is the one glibc uses (its first and last windows), and the constants are the hex values
    /// glibc's table holds.
    #[test]
    fn constants_are_glibcs() {
        assert_eq!(two_over_pi_window(0), 0xa2);
        assert_eq!(two_over_pi_window(3), 0xa2f9_836e);
        assert_eq!(two_over_pi_window(23), 0x3c43_9041);
        assert_eq!(HALF_PI_INV_2_24.to_bits(), 0x4164_5f30_6dc9_c883);
        assert_eq!(HALF_PI.to_bits(), 0x3ff9_21fb_5444_2d18);
        assert_eq!(HALF_PI_2_M62.to_bits(), 0x3c19_21fb_5444_2d18);
        let bits = [
            (POLY[0].c[1], 0xbfdf_ffff_fd0c_621c_u64),
            (POLY[0].c[2], 0x3fa5_5553_e106_8f19),
            (POLY[0].c[3], 0xbf56_c087_e89a_359d),
            (POLY[0].c[4], 0x3ef9_9343_027b_f8c3),
            (POLY[0].s[0], 0xbfc5_5554_5995_a603),
            (POLY[0].s[1], 0x3f81_1076_0523_0bc4),
            (POLY[0].s[2], 0xbf29_94eb_3774_cf24),
        ];
        for (v, b) in bits {
            assert_eq!(v.to_bits(), b, "{v}");
        }
        for k in 0..5 {
            assert_eq!(POLY[1].c[k].to_bits(), (-POLY[0].c[k]).to_bits());
        }
        assert_eq!(POLY[1].s.map(f64::to_bits), POLY[0].s.map(f64::to_bits));
    }

    /// Within an ulp of libm everywhere RoPE goes (angles up to a few thousand radians), and exact at the
    /// special points.
    #[test]
    fn close_to_libm() {
        assert_eq!(sincosf(0.0), (0.0, 1.0));
        let mut x = 1e-6f32;
        while x < 5000.0 {
            for v in [x, -x] {
                let (s, c) = sincosf(v);
                let (ls, lc) = (libm::sinf(v), libm::cosf(v));
                assert!(
                    (s - ls).abs() <= 1.5 * f32::EPSILON * ls.abs().max(1e-30) + 1e-37,
                    "sin {v}: {s} {ls}"
                );
                assert!(
                    (c - lc).abs() <= 1.5 * f32::EPSILON * lc.abs().max(1e-30) + 1e-37,
                    "cos {v}: {c} {lc}"
                );
            }
            x *= 1.0007;
        }
        assert!(sincosf(f32::INFINITY).0.is_nan());
    }
}
