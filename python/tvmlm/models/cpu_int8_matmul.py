"""Packed-weight matmuls on AVX-512 VNNI: int8 dot products instead of float32 dequantization.

The float32 path (models/quant.py + cpu_schedule.py) expands every 4-bit weight to a float32 and
spends one FMA per weight per activation row; it is compute bound at ~5 GB/s of weights here. This
kernel does what llama.cpp does: each activation row is quantized once per call to int8 in
32-element blocks (scale = max|x| / 127), and weights x activations run as `vpdpbusd` (64 u8 x s8
products per instruction, summed in int32 lanes); float32 only appears once per 64 weights, to
apply the two blocks' scales.

Bookkeeping, per 64 weights (two 32-element blocks 2g, 2g+1 of one row):

* the weights become 64 unsigned bytes: q4_1 nibbles as they are (0..15); q8_0 values + 128 (the
  u8 x s8 product is corrected below). q4_1 keeps llama.cpp's packing, so the nibbles need no
  shuffle: position i < 32 is the low nibble of byte i of the pair, i >= 32 the high nibble of
  byte i - 32, and byte j belongs to block 2g + j // 16. Hence int32 lane l (positions 4l..4l+3)
  belongs to block 2g + (l // 4) % 2 (q8_0, in element order: block 2g + l // 8);
* the activations are quantized into the same positions once per call, with per-lane scales;
* per lane: acc += float(dot) * w_scale * x_scale (+ w_min * block_sum(x) / 8 for q4_1, with the
  exact float sum); q8_0: dot(w + 128, x) - 128 * sum(x of the lane).

Work split: tiles of `ROWS` weight rows run in parallel; decode (fewer than `TOKEN_UNROLL` rows)
streams each tile once with software prefetch; prefill takes activation rows `TOKEN_UNROLL` at a
time, so every unpacked weight vector serves four tokens, in chunks of `TOKEN_CHUNK` rows whose
int8 form stays in L2. Accumulators and staged vectors are stack buffers under 1 KB: inside a
relax build the kernel's pointers carry no noalias information (measured: with a second, host
PrimFunc in the module, TVM inlines the noalias compute function), and LLVM keeps only such small
stack buffers in registers.

Numerics: the result differs from the float32 path by the int8 rounding of the activations (the
same approximation llama.cpp makes for these formats); tests bound it.
"""

from __future__ import annotations

import tvm
from tvm.script import tirx as T

ROWS = 8  # weight rows per parallel task
PREFETCH_ROWS = 16  # software prefetch distance: rows ahead (the hardware prefetcher alone reaches ~10 GB/s here)
ROW_UNROLL = 2  # weight rows computed together (x TOKEN_UNROLL accumulators: under the 1 KB stack limit)
TOKEN_UNROLL = 4  # activation rows (prefill tokens) sharing each unpacked weight vector
TOKEN_CHUNK = 64  # activation rows per pass over the weights (their int8 form stays in L2)
PAIR = 64  # weights per int8 dot step: two 32-element blocks
LANES = 16  # int32 / float32 lanes of one 512-bit register
_DPBUSD = "llvm.x86.avx512.vpdpbusd.512"


def supported(target: tvm.target.Target) -> bool:
    """Whether `target` (llvm) has the instructions this kernel is written with."""
    if target.kind.name != "llvm":
        return False
    from tvm.target.codegen import target_has_features

    try:
        return all(target_has_features(f, target) for f in ("avx512bw", "avx512vnni", "avx512f"))
    except Exception:  # noqa: BLE001 - an LLVM that cannot answer: take the portable path
        return False


def _q4_position(i):
    """q4_1: the element (within its 64-element pair) that byte position i (0..63) holds."""
    half, j = i // 32, i % 32
    return (j // 16) * 32 + j % 16 + half * 16


def int8_matmul(fmt: str, n_out: int, k_in: int):
    """y[a, b, n] = x[a, b, :] . W[n, :] for packed W (q4_1 or q8_0) and float32 x of any [a, b]
    (decode: [batch, 1, K]; prefill: [1, tokens, K])."""
    if fmt not in ("q4_1", "q8_0"):
        raise ValueError(f"int8 matmul format {fmt!r}; expected q4_1 or q8_0")
    if k_in % PAIR or n_out % ROWS:
        raise ValueError(f"int8 matmul needs K % {PAIR} == 0 and N % {ROWS} == 0, got N={n_out} K={k_in}")
    N, K, R, RU, MU, MC, PF = n_out, k_in, ROWS, ROW_UNROLL, TOKEN_UNROLL, TOKEN_CHUNK, PREFETCH_ROWS
    G = K // PAIR  # pairs of blocks per row
    NB = K // 32
    q4 = fmt == "q4_1"
    QB = K // 2 if q4 else K  # bytes per packed row
    qdtype = "uint8" if q4 else "int8"
    # q8_0 bytes are in element order: lanes 0-7 are block 0, 8-15 block 1
    _position = _q4_position if q4 else (lambda i: i)
    _lane_block = (lambda lane: (lane // 4) % 2) if q4 else (lambda lane: lane // 8)
    lane_blocks = [_lane_block(lane) for lane in range(LANES)]

    @T.macro
    def rows_times_tile(t, m0, mu_n, acc, wv, sv, mv, xq, xs, xc, q, scale, mins, y, b):
        """y[m0 : m0 + mu_n, tile t] for `mu_n` (a Python int) activation rows."""
        for ro in T.serial(R // RU):
            for ru in T.unroll(RU):
                for mu in T.unroll(mu_n):
                    acc[ru * mu_n + mu, T.ramp(0, 1, LANES)] = T.broadcast(T.float32(0), LANES)
            for ru in T.unroll(RU):
                for line in T.unroll((QB + 63) // 64):
                    T.evaluate(T.call_llvm_intrin("void", "llvm.prefetch.p0", T.address_of(
                        q[T.min(t * R + ro * RU + ru + PF, N - 1), T.min(line * 64, QB - 1)]), T.int32(0), T.int32(3), T.int32(1)))
            for g in T.serial(G):
                for ru in T.unroll(RU):
                    n: T.let[T.int32] = t * R + ro * RU + ru
                    # staged once per (row, pair) and reused by every activation row
                    wv[T.ramp(0, 1, PAIR)] = _unsigned_weights(q, n, g, q4)
                    sv[T.ramp(0, 1, LANES)] = _spread(T.Cast("float32x2", scale.vload([n, g * 2], "float16x2")), lane_blocks)
                    if q4:
                        mv[T.ramp(0, 1, LANES)] = _spread(T.Cast("float32x2", mins.vload([n, g * 2], "float16x2")), lane_blocks)
                    for mu in T.unroll(mu_n):
                        dot = T.Cast("float32x16", T.call_llvm_pure_intrin(
                            "int32x16", _DPBUSD, T.broadcast(T.int32(0), LANES), wv.vload([0], "uint8x64"),
                            xq.vload([m0 + mu, g * PAIR], "int8x64")))
                        sc = sv.vload([0], "float32x16") * xs.vload([m0 + mu, g * LANES], "float32x16")
                        if q4:
                            acc[ru * mu_n + mu, T.ramp(0, 1, LANES)] = (
                                acc.vload([ru * mu_n + mu, 0], "float32x16") + dot * sc
                                + mv.vload([0], "float32x16") * xc.vload([m0 + mu, g * LANES], "float32x16"))
                        else:
                            acc[ru * mu_n + mu, T.ramp(0, 1, LANES)] = acc.vload([ru * mu_n + mu, 0], "float32x16") + (
                                dot - xc.vload([m0 + mu, g * LANES], "float32x16")) * sc
            for ru in T.unroll(RU):
                for mu in T.unroll(mu_n):
                    y[(m0 + mu) // b, (m0 + mu) % b, t * R + ro * RU + ru] = _hsum16(acc.vload([ru * mu_n + mu, 0], "float32x16"))

    @T.macro
    def body(x, q, scale, mins, y, a, b):
        with T.sblock("root"):
            T.reads()
            T.writes()
            xq = T.sblock_alloc_buffer((a * b, K), "int8")
            xs = T.sblock_alloc_buffer((a * b, G * LANES), "float32")  # x scale per lane
            xc = T.sblock_alloc_buffer((a * b, G * LANES), "float32")  # q4_1: block sum / 8; q8_0: 128 * lane sum
            amax = T.sblock_alloc_buffer((2,), "float32")
            bsum = T.sblock_alloc_buffer((2,), "float32")
            # 1. quantize the activations, row by row
            for m in T.serial(a * b):
                for g in T.serial(G):
                    for h in T.serial(2):
                        amax[h] = T.float32(0)
                        bsum[h] = T.float32(0)
                        for e in T.serial(32):
                            amax[h] = T.max(amax[h], T.fabs(x[m // b, m % b, g * PAIR + h * 32 + e]))
                            bsum[h] = bsum[h] + x[m // b, m % b, g * PAIR + h * 32 + e]
                    for i in T.vectorized(PAIR):
                        xq[m, g * PAIR + i] = T.Cast("int8", T.round(
                            x[m // b, m % b, g * PAIR + _position(i)]
                            * T.if_then_else(amax[_position(i) // 32] > T.float32(0), T.float32(127) / amax[_position(i) // 32], T.float32(0))))
                    for lane in T.serial(LANES):
                        xs[m, g * LANES + lane] = amax[_lane_block(lane)] / T.float32(127)
                        if q4:
                            xc[m, g * LANES + lane] = bsum[_lane_block(lane)] * T.float32(0.125)
                        else:
                            xc[m, g * LANES + lane] = T.Cast("float32", (
                                T.Cast("int32", xq[m, g * PAIR + lane * 4]) + T.Cast("int32", xq[m, g * PAIR + lane * 4 + 1])
                                + T.Cast("int32", xq[m, g * PAIR + lane * 4 + 2]) + T.Cast("int32", xq[m, g * PAIR + lane * 4 + 3])) * 128)
            # 2. weight tiles in parallel; activation rows in groups of MU share each unpacked weight
            if a * b < MU:  # decode: each weight tile against one (or a few) activation rows
                for t in T.parallel(N // R):
                    with T.sblock("tile"):
                        T.reads()
                        T.writes()
                        acc1 = T.sblock_alloc_buffer((RU, LANES), "float32")
                        wv = T.sblock_alloc_buffer((PAIR,), "uint8")
                        sv = T.sblock_alloc_buffer((LANES,), "float32")
                        mv = T.sblock_alloc_buffer((LANES,), "float32")
                        for m in T.serial(a * b):
                            rows_times_tile(t, m, 1, acc1, wv, sv, mv, xq, xs, xc, q, scale, mins, y, b)
            else:  # prefill: MU activation rows share each unpacked weight vector
                # Chunks of MC rows keep their quantized activations in L2 while every weight
                # tile passes over them (the weights, ~1 MB per layer matmul, come from L3).
                for mc in T.serial((a * b + MC - 1) // MC):
                    for t in T.parallel(N // R):
                        with T.sblock("tile"):
                            T.reads()
                            T.writes()
                            acc = T.sblock_alloc_buffer((RU * MU, LANES), "float32")
                            acc1 = T.sblock_alloc_buffer((RU, LANES), "float32")
                            wv = T.sblock_alloc_buffer((PAIR,), "uint8")
                            sv = T.sblock_alloc_buffer((LANES,), "float32")
                            mv = T.sblock_alloc_buffer((LANES,), "float32")
                            rows: T.let[T.int64] = T.min(a * b - mc * MC, MC)
                            for mo in T.serial(rows // MU):
                                rows_times_tile(t, mc * MC + mo * MU, MU, acc, wv, sv, mv, xq, xs, xc, q, scale, mins, y, b)
                            for m in T.serial(mc * MC + rows // MU * MU, mc * MC + rows):
                                rows_times_tile(t, m, 1, acc1, wv, sv, mv, xq, xs, xc, q, scale, mins, y, b)

    if q4:
        @T.prim_func(private=True, s_tir=True)
        def kernel_q4_1(var_x: T.handle, q: T.Buffer((N, QB), qdtype), scale: T.Buffer((N, NB), "float16"),
                        mins: T.Buffer((N, NB), "float16"), var_y: T.handle):
            T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
            a = T.int64()
            b = T.int64()
            x = T.match_buffer(var_x, (a, b, K), "float32")
            y = T.match_buffer(var_y, (a, b, N), "float32")
            body(x, q, scale, mins, y, a, b)
        return kernel_q4_1

    @T.prim_func(private=True, s_tir=True)
    def kernel_q8_0(var_x: T.handle, q: T.Buffer((N, QB), qdtype), scale: T.Buffer((N, NB), "float16"), var_y: T.handle):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        a = T.int64()
        b = T.int64()
        x = T.match_buffer(var_x, (a, b, K), "float32")
        y = T.match_buffer(var_y, (a, b, N), "float32")
        body(x, q, scale, None, y, a, b)
    return kernel_q8_0


def _unsigned_weights(q, n, g, q4: bool):
    """The 64 weights of block pair g of row n as unsigned bytes, in the staged positions."""
    if q4:
        v = q.vload([n, g * 32], "uint8x32")
        return T.Shuffle([T.bitwise_and(v, T.broadcast(T.uint8(15), 32)), T.shift_right(v, T.broadcast(T.uint8(4), 32))], list(range(64)))
    return T.bitwise_xor(T.reinterpret("uint8x64", q.vload([n, g * PAIR], "int8x64")), T.broadcast(T.uint8(128), 64))


def _spread(pair, lane_blocks):
    """float32x16 whose lane l is pair[lane_blocks[l]] (a Shuffle may not widen: repeat the input)."""
    return T.Shuffle([pair] * (LANES // 2), lane_blocks)


def _hsum16(v):
    """Sum of the 16 lanes of a float32x16 vector: a shuffle tree (4 adds)."""
    for width in (8, 4, 2, 1):
        lo = T.Shuffle([v], list(range(width)))
        hi = T.Shuffle([v], list(range(width, 2 * width)))
        v = lo + hi
    return v


_OPAQUE = 8  # relax OpPatternKind.kOpaque: FuseOps must not merge other ops into this kernel


def _static_shape(ty) -> list[int | None] | None:
    shape = getattr(ty, "shape", None)
    values = getattr(shape, "values", None)
    if values is None:
        return None
    return [int(v) if isinstance(v, tvm.tirx.IntImm) else None for v in values]


def _packed_matmul_calls(mod: tvm.ir.IRModule) -> dict:
    """GlobalVar -> (format, N, K) for every `quant_matmul` PrimFunc (models/quant.py) whose every
    call_tir fits this kernel: float32 [a, b, K] activations, K % 64 == 0, N % 8 == 0. Shapes are
    read at the call sites (this TVM's Python API exposes no PrimFunc buffer_map)."""
    from tvm import relax

    found: dict = {}
    rejected: set = set()

    @relax.expr_functor.visitor
    class _Visitor(relax.PyExprVisitor):
        def visit_call_(self, call):  # noqa: N802
            if not (isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.call_tir"):
                return
            gv = call.args[0]
            fmt = next((f for f in ("q4_1", "q8_0") if gv.name_hint.startswith(f"{f}_matmul")), None)
            if fmt is None:
                return
            args = list(call.args[1].fields)
            x, out = _static_shape(args[0].ty), _static_shape(call.ty_args[0])
            ok = (
                len(args) == (4 if fmt == "q4_1" else 3)
                and x is not None and out is not None and len(x) == 3 and len(out) == 3
                and args[0].ty.dtype == "float32"
                and x[-1] is not None and out[-1] is not None
                and x[-1] % PAIR == 0 and out[-1] % ROWS == 0
            )
            shape = (fmt, out[-1], x[-1]) if ok else None
            if shape is None or found.get(gv, shape) != shape:
                rejected.add(gv)
            else:
                found[gv] = shape

    for func in mod.functions.values():
        if isinstance(func, relax.Function):
            _Visitor().visit_expr(func)
    return {gv: shape for gv, shape in found.items() if gv not in rejected}


def replace_packed_matmuls() -> tvm.transform.Pass:
    """Module pass (before FuseOps): swap every packed-weight matmul PrimFunc that fits this kernel
    (K % 64 == 0, N % 8 == 0, [a, b, K] activations) for it. The caller checks `supported(target)`."""

    @tvm.transform.module_pass(opt_level=0, name="tvmlm_int8_matmul")
    def _pass(mod: tvm.ir.IRModule, _ctx: tvm.transform.PassContext) -> tvm.ir.IRModule:
        for gv, shape in _packed_matmul_calls(mod).items():
            attrs = {**dict(mod[gv].attrs or {}), "op_pattern": _OPAQUE, "tirx.is_scheduled": True}
            mod[gv] = int8_matmul(*shape).with_attrs(attrs)
        return mod

    return _pass
