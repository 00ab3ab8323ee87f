"""The Triton kernels of :mod:`pds_nerfstudio.fast.triton_hash_encoding` (imported only when they are first used).

Both read positions [N, 3] and a table [L T, F] (float32, contiguous); one program handles BLOCK
points at every level. Corners are named by (x, y, z) with c = ceil, f = floor; i_ccc ... i_fcf
are the table offsets of nerfstudio's hashed_0 ... hashed_7 (times F). The y prime 2654435761
is -1640531535 as a wrapping int32. The helpers are ``triton.jit`` device functions; the CPU
interpreter path swaps them for interpreted ones (see ``DeviceKernel``).
"""

import triton
import triton.language as tl


@triton.jit
def _block_positions(x_ptr, num_points, BLOCK: tl.constexpr):
    """This program's rows, which of them exist, and their x, y, z."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    valid = rows < num_points
    px = tl.load(x_ptr + rows * 3 + 0, mask=valid, other=0.0)
    py = tl.load(x_ptr + rows * 3 + 1, mask=valid, other=0.0)
    pz = tl.load(x_ptr + rows * 3 + 2, mask=valid, other=0.0)
    return rows, valid, px, py, pz


@triton.jit
def _corners(px, py, pz, scale, level, table_size, FEATURES: tl.constexpr):
    """Offsets (ox, oy, oz) in the level's cell and the table offsets of its 8 corners."""
    sx, sy, sz = px * scale, py * scale, pz * scale
    fx, fy, fz = tl.floor(sx), tl.floor(sy), tl.floor(sz)
    hx_f, hx_c = fx.to(tl.int32), tl.ceil(sx).to(tl.int32)
    hy_f, hy_c = fy.to(tl.int32) * -1640531535, tl.ceil(sy).to(tl.int32) * -1640531535
    hz_f, hz_c = fz.to(tl.int32) * 805459861, tl.ceil(sz).to(tl.int32) * 805459861
    mask, base = table_size - 1, level * table_size
    i_ccc = (((hx_c ^ hy_c ^ hz_c) & mask) + base).to(tl.int64) * FEATURES
    i_cfc = (((hx_c ^ hy_f ^ hz_c) & mask) + base).to(tl.int64) * FEATURES
    i_ffc = (((hx_f ^ hy_f ^ hz_c) & mask) + base).to(tl.int64) * FEATURES
    i_fcc = (((hx_f ^ hy_c ^ hz_c) & mask) + base).to(tl.int64) * FEATURES
    i_ccf = (((hx_c ^ hy_c ^ hz_f) & mask) + base).to(tl.int64) * FEATURES
    i_cff = (((hx_c ^ hy_f ^ hz_f) & mask) + base).to(tl.int64) * FEATURES
    i_fff = (((hx_f ^ hy_f ^ hz_f) & mask) + base).to(tl.int64) * FEATURES
    i_fcf = (((hx_f ^ hy_c ^ hz_f) & mask) + base).to(tl.int64) * FEATURES
    return sx - fx, sy - fy, sz - fz, i_ccc, i_cfc, i_ffc, i_fcc, i_ccf, i_cff, i_fff, i_fcf


@triton.jit
def _blend_x(table_ptr, i_ccc, i_cfc, i_ffc, i_fcc, i_ccf, i_cff, i_fff, i_fcf, ox, valid):
    """The 8 corners' features (at table_ptr + offset) blended along x, in pytorch_fwd's order:
    (f_03, f_12, f_47, f_56), of which f_03, f_12 have y = ceil, f_47, f_56 y = floor."""
    f_ccc = tl.load(table_ptr + i_ccc, mask=valid, other=0.0)
    f_cfc = tl.load(table_ptr + i_cfc, mask=valid, other=0.0)
    f_ffc = tl.load(table_ptr + i_ffc, mask=valid, other=0.0)
    f_fcc = tl.load(table_ptr + i_fcc, mask=valid, other=0.0)
    f_ccf = tl.load(table_ptr + i_ccf, mask=valid, other=0.0)
    f_cff = tl.load(table_ptr + i_cff, mask=valid, other=0.0)
    f_fff = tl.load(table_ptr + i_fff, mask=valid, other=0.0)
    f_fcf = tl.load(table_ptr + i_fcf, mask=valid, other=0.0)
    f_03 = f_ccc * ox + f_fcc * (1 - ox)
    f_12 = f_cfc * ox + f_ffc * (1 - ox)
    f_47 = f_ccf * ox + f_fcf * (1 - ox)
    f_56 = f_cff * ox + f_fff * (1 - ox)
    return f_03, f_12, f_47, f_56, f_ccc - f_fcc, f_cfc - f_ffc, f_ccf - f_fcf, f_cff - f_fff


@triton.jit
def hash_encode_forward(
    x_ptr, table_ptr, scale_ptr, out_ptr, num_points, table_size,
    LEVELS: tl.constexpr, FEATURES: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    rows, valid, px, py, pz = _block_positions(x_ptr, num_points, BLOCK)
    for level in range(LEVELS):
        scale = tl.load(scale_ptr + level)
        ox, oy, oz, i_ccc, i_cfc, i_ffc, i_fcc, i_ccf, i_cff, i_fff, i_fcf = _corners(
            px, py, pz, scale, level, table_size, FEATURES
        )
        for feature in tl.static_range(FEATURES):
            f_03, f_12, f_47, f_56, _, _, _, _ = _blend_x(
                table_ptr + feature, i_ccc, i_cfc, i_ffc, i_fcc, i_ccf, i_cff, i_fff, i_fcf, ox, valid
            )
            # then y, then z, as pytorch_fwd
            value = (f_03 * oy + f_12 * (1 - oy)) * oz + (f_47 * oy + f_56 * (1 - oy)) * (1 - oz)
            tl.store(out_ptr + rows * (LEVELS * FEATURES) + level * FEATURES + feature, value, mask=valid)


@triton.jit
def hash_encode_backward(
    x_ptr, table_ptr, scale_ptr, grad_out_ptr, grad_table_ptr, grad_x_ptr, num_points, table_size,
    LEVELS: tl.constexpr, FEATURES: tl.constexpr, BLOCK: tl.constexpr, POSITION_GRAD: tl.constexpr,
):  # fmt: skip
    rows, valid, px, py, pz = _block_positions(x_ptr, num_points, BLOCK)
    gx = px * 0.0  # (not tl.zeros_like: a library jit helper, which the CPU interpreter path cannot call)
    gy = px * 0.0
    gz = px * 0.0
    for level in range(LEVELS):
        scale = tl.load(scale_ptr + level)
        ox, oy, oz, i_ccc, i_cfc, i_ffc, i_fcc, i_ccf, i_cff, i_fff, i_fcf = _corners(
            px, py, pz, scale, level, table_size, FEATURES
        )
        for feature in tl.static_range(FEATURES):
            g = tl.load(grad_out_ptr + rows * (LEVELS * FEATURES) + level * FEATURES + feature, mask=valid, other=0.0)
            # a corner's weight is the product of its axis weights: o for ceil, 1 - o for floor
            g_zc, g_zf = g * oz, g * (1 - oz)
            g_yc_zc, g_yf_zc, g_yc_zf, g_yf_zf = g_zc * oy, g_zc * (1 - oy), g_zf * oy, g_zf * (1 - oy)
            grad_ptr = grad_table_ptr + feature
            tl.atomic_add(grad_ptr + i_ccc, g_yc_zc * ox, mask=valid, sem="relaxed")
            tl.atomic_add(grad_ptr + i_fcc, g_yc_zc * (1 - ox), mask=valid, sem="relaxed")
            tl.atomic_add(grad_ptr + i_cfc, g_yf_zc * ox, mask=valid, sem="relaxed")
            tl.atomic_add(grad_ptr + i_ffc, g_yf_zc * (1 - ox), mask=valid, sem="relaxed")
            tl.atomic_add(grad_ptr + i_ccf, g_yc_zf * ox, mask=valid, sem="relaxed")
            tl.atomic_add(grad_ptr + i_fcf, g_yc_zf * (1 - ox), mask=valid, sem="relaxed")
            tl.atomic_add(grad_ptr + i_cff, g_yf_zf * ox, mask=valid, sem="relaxed")
            tl.atomic_add(grad_ptr + i_fff, g_yf_zf * (1 - ox), mask=valid, sem="relaxed")
            if POSITION_GRAD:
                f_03, f_12, f_47, f_56, dx_cc, dx_fc, dx_cf, dx_ff = _blend_x(
                    table_ptr + feature, i_ccc, i_cfc, i_ffc, i_fcc, i_ccf, i_cff, i_fff, i_fcf, ox, valid
                )
                # d value / d o per axis (dx_yz: the x-difference of the corners at y, z); d o / d x = scale
                d_x = dx_cc * g_yc_zc + dx_fc * g_yf_zc + dx_cf * g_yc_zf + dx_ff * g_yf_zf
                d_y = (f_03 - f_12) * g_zc + (f_47 - f_56) * g_zf
                d_z = ((f_03 * oy + f_12 * (1 - oy)) - (f_47 * oy + f_56 * (1 - oy))) * g
                gx += d_x * scale
                gy += d_y * scale
                gz += d_z * scale
    if POSITION_GRAD:
        tl.store(grad_x_ptr + rows * 3 + 0, gx, mask=valid)
        tl.store(grad_x_ptr + rows * 3 + 1, gy, mask=valid)
        tl.store(grad_x_ptr + rows * 3 + 2, gz, mask=valid)
