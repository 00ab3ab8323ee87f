"""The Triton kernels of :mod:`pds_nerfstudio.triton_hash_encoding` (imported only when they are first used).

Both read positions [N, 3] and a table [L T, F] (float32, contiguous); one program handles BLOCK
points at every level. Corners are named by (x, y, z) with c = ceil, f = floor; i_ccc ... i_fcf
are nerfstudio's hashed_0 ... hashed_7 times F. The y prime 2654435761 is -1640531535 as a
wrapping int32.
"""

import triton
import triton.language as tl


@triton.jit
def hash_encode_forward(
    x_ptr, table_ptr, scale_ptr, out_ptr, num_points, table_size,
    LEVELS: tl.constexpr, FEATURES: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    valid = rows < num_points
    px = tl.load(x_ptr + rows * 3 + 0, mask=valid, other=0.0)
    py = tl.load(x_ptr + rows * 3 + 1, mask=valid, other=0.0)
    pz = tl.load(x_ptr + rows * 3 + 2, mask=valid, other=0.0)
    for level in range(LEVELS):
        scale = tl.load(scale_ptr + level)
        sx, sy, sz = px * scale, py * scale, pz * scale
        fx, fy, fz = tl.floor(sx), tl.floor(sy), tl.floor(sz)
        ox, oy, oz = sx - fx, sy - fy, sz - fz
        hx_f, hx_c = fx.to(tl.int32), tl.ceil(sx).to(tl.int32)
        hy_f, hy_c = fy.to(tl.int32) * -1640531535, tl.ceil(sy).to(tl.int32) * -1640531535
        hz_f, hz_c = fz.to(tl.int32) * 805459861, tl.ceil(sz).to(tl.int32) * 805459861
        mask, base = table_size - 1, level * table_size
        # corners named by (x, y, z), c = ceil, f = floor; pytorch_fwd's f_0 ... f_7
        i_ccc = (((hx_c ^ hy_c ^ hz_c) & mask) + base).to(tl.int64) * FEATURES
        i_cfc = (((hx_c ^ hy_f ^ hz_c) & mask) + base).to(tl.int64) * FEATURES
        i_ffc = (((hx_f ^ hy_f ^ hz_c) & mask) + base).to(tl.int64) * FEATURES
        i_fcc = (((hx_f ^ hy_c ^ hz_c) & mask) + base).to(tl.int64) * FEATURES
        i_ccf = (((hx_c ^ hy_c ^ hz_f) & mask) + base).to(tl.int64) * FEATURES
        i_cff = (((hx_c ^ hy_f ^ hz_f) & mask) + base).to(tl.int64) * FEATURES
        i_fff = (((hx_f ^ hy_f ^ hz_f) & mask) + base).to(tl.int64) * FEATURES
        i_fcf = (((hx_f ^ hy_c ^ hz_f) & mask) + base).to(tl.int64) * FEATURES
        for feature in tl.static_range(FEATURES):
            f_ccc = tl.load(table_ptr + i_ccc + feature, mask=valid, other=0.0)
            f_cfc = tl.load(table_ptr + i_cfc + feature, mask=valid, other=0.0)
            f_ffc = tl.load(table_ptr + i_ffc + feature, mask=valid, other=0.0)
            f_fcc = tl.load(table_ptr + i_fcc + feature, mask=valid, other=0.0)
            f_ccf = tl.load(table_ptr + i_ccf + feature, mask=valid, other=0.0)
            f_cff = tl.load(table_ptr + i_cff + feature, mask=valid, other=0.0)
            f_fff = tl.load(table_ptr + i_fff + feature, mask=valid, other=0.0)
            f_fcf = tl.load(table_ptr + i_fcf + feature, mask=valid, other=0.0)
            # pytorch_fwd's order of blends: x, then y, then z
            f_03 = f_ccc * ox + f_fcc * (1 - ox)
            f_12 = f_cfc * ox + f_ffc * (1 - ox)
            f_56 = f_cff * ox + f_fff * (1 - ox)
            f_47 = f_ccf * ox + f_fcf * (1 - ox)
            f0312 = f_03 * oy + f_12 * (1 - oy)
            f4756 = f_47 * oy + f_56 * (1 - oy)
            value = f0312 * oz + f4756 * (1 - oz)
            tl.store(out_ptr + rows * (LEVELS * FEATURES) + level * FEATURES + feature, value, mask=valid)

@triton.jit
def hash_encode_backward(
    x_ptr, table_ptr, scale_ptr, grad_out_ptr, grad_table_ptr, grad_x_ptr, num_points, table_size,
    LEVELS: tl.constexpr, FEATURES: tl.constexpr, BLOCK: tl.constexpr, POSITION_GRAD: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    valid = rows < num_points
    px = tl.load(x_ptr + rows * 3 + 0, mask=valid, other=0.0)
    py = tl.load(x_ptr + rows * 3 + 1, mask=valid, other=0.0)
    pz = tl.load(x_ptr + rows * 3 + 2, mask=valid, other=0.0)
    gx = px * 0.0  # (tl.zeros_like is a jit helper, which the interpreter outside TRITON_INTERPRET cannot call)
    gy = px * 0.0
    gz = px * 0.0
    for level in range(LEVELS):
        scale = tl.load(scale_ptr + level)
        sx, sy, sz = px * scale, py * scale, pz * scale
        fx, fy, fz = tl.floor(sx), tl.floor(sy), tl.floor(sz)
        ox, oy, oz = sx - fx, sy - fy, sz - fz
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
        # each corner's weight is the product of its three axis weights (o for ceil, 1 - o for floor)
        wx_c, wx_f, wy_c, wy_f, wz_c, wz_f = ox, 1 - ox, oy, 1 - oy, oz, 1 - oz
        for feature in tl.static_range(FEATURES):
            g = tl.load(grad_out_ptr + rows * (LEVELS * FEATURES) + level * FEATURES + feature, mask=valid, other=0.0)
            g_zc, g_zf = g * wz_c, g * wz_f
            g_yc_zc, g_yf_zc, g_yc_zf, g_yf_zf = g_zc * wy_c, g_zc * wy_f, g_zf * wy_c, g_zf * wy_f
            tl.atomic_add(grad_table_ptr + i_ccc + feature, g_yc_zc * wx_c, mask=valid, sem="relaxed")
            tl.atomic_add(grad_table_ptr + i_fcc + feature, g_yc_zc * wx_f, mask=valid, sem="relaxed")
            tl.atomic_add(grad_table_ptr + i_cfc + feature, g_yf_zc * wx_c, mask=valid, sem="relaxed")
            tl.atomic_add(grad_table_ptr + i_ffc + feature, g_yf_zc * wx_f, mask=valid, sem="relaxed")
            tl.atomic_add(grad_table_ptr + i_ccf + feature, g_yc_zf * wx_c, mask=valid, sem="relaxed")
            tl.atomic_add(grad_table_ptr + i_fcf + feature, g_yc_zf * wx_f, mask=valid, sem="relaxed")
            tl.atomic_add(grad_table_ptr + i_cff + feature, g_yf_zf * wx_c, mask=valid, sem="relaxed")
            tl.atomic_add(grad_table_ptr + i_fff + feature, g_yf_zf * wx_f, mask=valid, sem="relaxed")
            if POSITION_GRAD:
                f_ccc = tl.load(table_ptr + i_ccc + feature, mask=valid, other=0.0)
                f_cfc = tl.load(table_ptr + i_cfc + feature, mask=valid, other=0.0)
                f_ffc = tl.load(table_ptr + i_ffc + feature, mask=valid, other=0.0)
                f_fcc = tl.load(table_ptr + i_fcc + feature, mask=valid, other=0.0)
                f_ccf = tl.load(table_ptr + i_ccf + feature, mask=valid, other=0.0)
                f_cff = tl.load(table_ptr + i_cff + feature, mask=valid, other=0.0)
                f_fff = tl.load(table_ptr + i_fff + feature, mask=valid, other=0.0)
                f_fcf = tl.load(table_ptr + i_fcf + feature, mask=valid, other=0.0)
                # d value / d o per axis; d o / d x = scale (the floor is piecewise constant)
                d_x = (f_ccc - f_fcc) * g_yc_zc + (f_cfc - f_ffc) * g_yf_zc
                d_x += (f_ccf - f_fcf) * g_yc_zf + (f_cff - f_fff) * g_yf_zf
                f_03 = f_ccc * ox + f_fcc * (1 - ox)
                f_12 = f_cfc * ox + f_ffc * (1 - ox)
                f_56 = f_cff * ox + f_fff * (1 - ox)
                f_47 = f_ccf * ox + f_fcf * (1 - ox)
                d_y = (f_03 - f_12) * g_zc + (f_47 - f_56) * g_zf
                d_z = ((f_03 * oy + f_12 * (1 - oy)) - (f_47 * oy + f_56 * (1 - oy))) * g
                gx += d_x * scale
                gy += d_y * scale
                gz += d_z * scale
    if POSITION_GRAD:
        tl.store(grad_x_ptr + rows * 3 + 0, gx, mask=valid)
        tl.store(grad_x_ptr + rows * 3 + 1, gy, mask=valid)
        tl.store(grad_x_ptr + rows * 3 + 2, gz, mask=valid)
