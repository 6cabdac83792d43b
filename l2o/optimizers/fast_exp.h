// The exp of the learned optimizers' kernels (kernels.cpp's fast_exp on floats, lstm_blocks.h's
// vexp on SIMD vectors): Cody-Waite reduction and Cephes' degree-6 polynomial, ~2 ulp, plain
// arithmetic that vectorizes into a few FMAs per value (libm's expf is several times slower).
#pragma once

namespace l2o_exp {

// For x in [-87, 88] and k = floor(x log2(e) + 1/2): p with exp(x) = p * 2^k (a NaN stays NaN).
// T: float or a GCC vector of floats.
template <typename T>
inline T exp_mantissa(T x, T k) {
  const T r = (x - k * 0.693359375f) + k * 2.12194440e-4f;
  T p = T{} + 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  return p * r * r + r + 1.0f;
}

}  // namespace l2o_exp
