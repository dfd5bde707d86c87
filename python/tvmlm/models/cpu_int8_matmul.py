"""Packed-weight matmuls on AVX-512 VNNI or AVX2: int8 dot products instead of float32 dequantization.

The float32 path (models/quant.py + cpu_schedule.py) expands every 4-bit weight to a float32 and
spends one FMA per weight per activation row. This kernel does what llama.cpp does: each
activation row is quantized once per call to int8 in 32-element blocks (scale = max|x| / 127), and
weights x activations run as `vpdpbusd` (u8 x s8 products, four per int32 lane, summed in the lane).

The weights come in the row-interleaved layout (models/quant.py, `ROW_GROUP` = 16): for each group
of 16 rows and each block, 64-byte vectors whose int32 lane r holds 4 consecutive bytes of row r.
So one `vpdpbusd` against 4 activation bytes broadcast to every lane advances 16 output rows at
once, and a block's 16 results land in 16 lanes: no horizontal sums, no shuffles, and the output
is one contiguous 16-float store. Per (group, block):

* q4_1: 4 vectors; `v & 15` holds elements 4s..4s+3 (word s), `v >> 4` elements 16+4s..16+4s+3, so
  the activations stay in element order. y += float(dot) * w_scale * x_scale + w_min * sum(x̂),
  x̂ = x_scale * int8 x: the exact dot of the dequantized weights with the rounded activations;
* q8_0: 8 vectors of signed bytes; `v ^ 128` makes them unsigned (w + 128), corrected by
  - 128 * sum(int8 x) per block: y += (float(dot) - 128 * sum(xq)) * w_scale * x_scale.

Work split: prefill and batches (`TOKEN_UNROLL` activation rows or more) run tiles of
`GROUP_UNROLL` row groups in parallel, each unpacked weight vector serving `TOKEN_UNROLL` tokens,
over chunks of `TOKEN_CHUNK` tokens whose int8 form stays in L2; decode runs tiles of
`DECODE_GROUPS` row groups (independent dependency chains) with a software prefetch one tile
ahead. Accumulators and staged vectors are stack buffers under 1 KB: inside a relax build the
kernel's pointers carry no noalias information (with a second, host PrimFunc in the module, TVM
inlines the noalias compute function), and LLVM keeps only such small stack buffers in registers.

AVX2 (no VNNI) computes the same dot as `vpmaddubsw` (u8 x s8 pairs summed into int16) then
`vpmaddwd` by ones (int16 pairs into int32), on each 32-byte half of a 64-byte vector, with the
same layout and results. No int16 sum can saturate: q4_1 pairs reach 2 x 15 x 127; q8_0 takes
|w| x (x * sign(w)) (`vpsignb`), at most 2 x 128 x 127, so it needs no +128 offset. Tiles are
smaller there: AVX2 has 16 vector registers, not 32.

Numerics: the result differs from the float32 path by the int8 rounding of the activations (the
same approximation llama.cpp makes for these formats); tests bound it.

Residual activations (RESIDUAL_SUFFIX, the MLP's down projection): each activation block is
rounded to int8 twice, the block and then what its rounding left (scale max|rest| / 127), and both
digits are dotted with every weight vector unpacked once, so x is carried to about 14 bits for one
more `vpdpbusd` per weight vector. The down projection's input (act(gate) * up) is the least
uniform activation of a layer: on SmolLM2 Q8_0 its int8 rounding was 0.0014 of the 0.0069 nats
mean KL to float32, which left tvmlm above llama.cpp's KL; other projections stay one digit.
"""

from __future__ import annotations

import tvm
from tvm.script import tirx as T

from .cpu_features import llvm_has
from .fast_math import reduce_lanes
from .quant import BLOCK, RESIDUAL_SUFFIX, ROW_GROUP

TOKEN_UNROLL = 4  # activation rows sharing each unpacked weight vector (prefill, batches)
#: Per ISA: row groups per prefill tile (AVX-512: 4 x 2 int32 + 4 x 2 float32 accumulators), and
#: per decode tile (independent dot chains).
GROUP_UNROLL = {"avx512": 2, "avx2": 1}
DECODE_GROUPS = {"avx512": 4, "avx2": 2}
TOKEN_CHUNK = 64  # activation rows per pass over the weights (their int8 form stays in L2)
PREFETCH_TILES = 1  # decode: prefetch the weights this many tiles ahead
LANES = 16  # int32 / float32 lanes of one 512-bit register (= ROW_GROUP)
_DPBUSD = "llvm.x86.avx512.vpdpbusd.512"
_PMADDUBSW = "llvm.x86.avx2.pmadd.ub.sw"
_PMADDWD = "llvm.x86.avx2.pmadd.wd"
_PSIGNB = "llvm.x86.avx2.psign.b"


def isa(target: tvm.target.Target) -> str | None:
    """The instruction set this kernel uses on `target`: "avx512" (VNNI), "avx2", or None."""
    if llvm_has(target, "avx512bw", "avx512vnni", "avx512f"):
        return "avx512"
    if llvm_has(target, "avx2", "fma", "f16c"):
        return "avx2"
    return None


def supported(target: tvm.target.Target) -> bool:
    """Whether `target` (llvm) has the instructions of one of this kernel's paths."""
    return isa(target) is not None


def _dot(acc, weights, x_word):
    """acc + per-lane dot of 4 unsigned weight bytes with the 4 activation bytes in int32 `x_word`."""
    return T.call_llvm_pure_intrin("int32x16", _DPBUSD, acc, weights, T.reinterpret("int8x64", T.broadcast(x_word, LANES)))


def _dot_avx2(acc, weights, x_bytes):
    """acc (int32x8) + per-lane dot of 4 unsigned weight bytes with 4 signed bytes of `x_bytes`."""
    pairs = T.call_llvm_pure_intrin("int16x16", _PMADDUBSW, weights, x_bytes)
    return acc + T.call_llvm_pure_intrin("int32x8", _PMADDWD, pairs, T.broadcast(T.int16(1), 16))


def _x_bytes(x_word):
    """int32 `x_word` (4 activation bytes) repeated over 32 bytes."""
    return T.reinterpret("int8x32", T.broadcast(x_word, 8))


def _sign(a, b):
    """a * sign(b), bytewise (`vpsignb`): 0 where b is 0."""
    return T.call_llvm_pure_intrin("int8x32", _PSIGNB, a, b)


def int8_matmul(fmt: str, n_out: int, k_in: int, isa: str = "avx512", residual: bool = False):
    """y[a, b, n] = x[a, b, :] . W[n, :] for W packed in `fmt` (q4_1 or q8_0) in the row-interleaved
    layout, and float32 x of any [a, b] (decode: [batch, 1, K]; prefill: [1, tokens, K]), with the
    instructions of `isa` ("avx512" or "avx2"). `residual`: each activation block is two int8
    digits, its rounding and the rounding of what that left (module docstring, "Residual activations")."""
    if fmt not in ("q4_1", "q8_0"):
        raise ValueError(f"int8 matmul format {fmt!r}; expected q4_1 or q8_0")
    if isa not in GROUP_UNROLL:
        raise ValueError(f"int8 matmul isa {isa!r}; expected one of {sorted(GROUP_UNROLL)}")
    if k_in % BLOCK or n_out % ROW_GROUP:
        raise ValueError(f"int8 matmul needs K % {BLOCK} == 0 and N % {ROW_GROUP} == 0, got N={n_out} K={k_in}")
    ND = 2 if residual else 1  # int8 digits per activation block
    N, K, MU, NU, DU, MC, PF = n_out, k_in, TOKEN_UNROLL // ND, GROUP_UNROLL[isa], DECODE_GROUPS[isa], TOKEN_CHUNK, PREFETCH_TILES
    G, NB = N // ROW_GROUP, K // BLOCK
    q4 = fmt == "q4_1"
    avx2 = isa == "avx2"
    WORDS = 4 if q4 else 8  # 64-byte vectors per (row group, block)

    @T.macro
    def tile(g0, nu_n, m0, mu_n, acc, iacc, wv, sv, mv, xq, xd, xc, q, scale, mins, y, bb, prefetch):
        """y[m0 : m0 + mu_n, row groups g0 : g0 + nu_n] (`mu_n`, `nu_n`: Python ints)."""
        for i in T.unroll(mu_n * nu_n):
            acc[i, T.ramp(0, 1, LANES)] = T.broadcast(T.float32(0), LANES)
        for b in T.serial(NB):
            for i in T.unroll(mu_n * nu_n * ND):
                iacc[i, T.ramp(0, 1, LANES)] = T.broadcast(T.int32(0), LANES)
            if prefetch:
                for nu in T.unroll(nu_n):
                    for s in T.unroll(WORDS):
                        T.evaluate(T.call_llvm_intrin("void", "llvm.prefetch.p0", T.address_of(
                            q[T.min(g0 + nu + PF * nu_n, G - 1), b, s * 64]), T.int32(0), T.int32(3), T.int32(1)))
            for s in T.unroll(WORDS):
                # unpack once per tile, use for every activation row
                for nu in T.unroll(nu_n):
                    if q4:
                        w: T.let[T.uint8x64] = q.vload([g0 + nu, b, s * 64], "uint8x64")
                        wv[nu * 2, T.ramp(0, 1, 64)] = T.bitwise_and(w, T.broadcast(T.uint8(15), 64))
                        wv[nu * 2 + 1, T.ramp(0, 1, 64)] = T.shift_right(w, T.broadcast(T.uint8(4), 64))
                    elif avx2:  # |w| as unsigned bytes (-128 -> 128 too), and w for the signs of x
                        for h in T.unroll(2):
                            w: T.let[T.int8x32] = q.vload([g0 + nu, b, s * 64 + h * 32], "int8x32")
                            wv[nu * 2, T.ramp(h * 32, 1, 32)] = T.reinterpret("uint8x32", _sign(w, w))
                            wv[nu * 2 + 1, T.ramp(h * 32, 1, 32)] = T.reinterpret("uint8x32", w)
                    else:
                        wv[nu, T.ramp(0, 1, 64)] = T.bitwise_xor(
                            T.reinterpret("uint8x64", q.vload([g0 + nu, b, s * 64], "int8x64")), T.broadcast(T.uint8(128), 64))
                for mu in T.unroll(mu_n):
                    for nu in T.unroll(nu_n):
                        for dg in T.unroll(ND):
                            i: T.let[T.int32] = (mu * nu_n + nu) * ND + dg
                            r: T.let[T.int64] = T.Cast("int64", m0 + mu) * ND + T.Cast("int64", dg)  # this digit's int8 row
                            if avx2:  # two 8-lane halves: rows 0-7 and 8-15 of the group
                                for h in T.unroll(2):
                                    if q4:
                                        iacc[i, T.ramp(h * 8, 1, 8)] = _dot_avx2(
                                            _dot_avx2(iacc.vload([i, h * 8], "int32x8"), wv.vload([nu * 2, h * 32], "uint8x32"),
                                                      _x_bytes(xq[r, b * 8 + s])),
                                            wv.vload([nu * 2 + 1, h * 32], "uint8x32"), _x_bytes(xq[r, b * 8 + 4 + s]))
                                    else:
                                        iacc[i, T.ramp(h * 8, 1, 8)] = _dot_avx2(
                                            iacc.vload([i, h * 8], "int32x8"), wv.vload([nu * 2, h * 32], "uint8x32"),
                                            _sign(_x_bytes(xq[r, b * 8 + s]), T.reinterpret("int8x32", wv.vload([nu * 2 + 1, h * 32], "uint8x32"))))
                            elif q4:
                                iacc[i, T.ramp(0, 1, LANES)] = _dot(
                                    _dot(iacc.vload([i, 0], "int32x16"), wv.vload([nu * 2, 0], "uint8x64"), xq[r, b * 8 + s]),
                                    wv.vload([nu * 2 + 1, 0], "uint8x64"), xq[r, b * 8 + 4 + s])
                            else:
                                iacc[i, T.ramp(0, 1, LANES)] = _dot(
                                    iacc.vload([i, 0], "int32x16"), wv.vload([nu, 0], "uint8x64"), xq[r, b * 8 + s])
            for nu in T.unroll(nu_n):
                sv[nu, T.ramp(0, 1, LANES)] = T.Cast("float32x16", scale.vload([g0 + nu, b, 0], "float16x16"))
                if q4:
                    mv[nu, T.ramp(0, 1, LANES)] = T.Cast("float32x16", mins.vload([g0 + nu, b, 0], "float16x16"))
            for mu in T.unroll(mu_n):
                for nu in T.unroll(nu_n):
                    for dg in T.unroll(ND):
                        i: T.let[T.int32] = mu * nu_n + nu
                        r: T.let[T.int64] = T.Cast("int64", m0 + mu) * ND + T.Cast("int64", dg)
                        dot: T.let[T.float32x16] = T.Cast("float32x16", iacc.vload([i * ND + dg, 0], "int32x16"))
                        scales: T.let[T.float32x16] = sv.vload([nu, 0], "float32x16") * T.broadcast(xd[r, b], LANES)
                        if q4:
                            acc[i, T.ramp(0, 1, LANES)] = (acc.vload([i, 0], "float32x16") + dot * scales
                                                           + mv.vload([nu, 0], "float32x16") * T.broadcast(xc[r, b], LANES))
                        else:
                            acc[i, T.ramp(0, 1, LANES)] = acc.vload([i, 0], "float32x16") + (dot - T.broadcast(xc[r, b], LANES)) * scales
        for mu in T.unroll(mu_n):
            for nu in T.unroll(nu_n):
                y[(m0 + mu) // bb, (m0 + mu) % bb, T.ramp((g0 + nu) * LANES, 1, LANES)] = acc.vload([mu * nu_n + nu, 0], "float32x16")

    @T.macro
    def quantize_digit(r, b, v, xq, xd, xc):
        """Block b of v -> int8 row r of xq (4 per int32 word), its scale xd and correction xc."""
        amax: T.let[T.float32] = reduce_lanes(T.fabs(v), BLOCK, T.max)
        inv: T.let[T.float32] = T.if_then_else(amax > T.float32(0), T.float32(127) / amax, T.float32(0))
        qv: T.let[T.int8x32] = T.Cast("int8x32", T.round(v * T.broadcast(inv, BLOCK)))
        xq[r, T.ramp(b * 8, 1, 8)] = T.reinterpret("int32x8", qv)
        xd[r, b] = amax / T.float32(127)
        qsum: T.let[T.int32] = reduce_lanes(T.Cast("int32x32", qv), BLOCK, lambda lo, hi: lo + hi)
        if q4:
            # the min term takes the sum of the *rounded* x: the whole result is then the exact
            # dot of the dequantized weights (scale * q + min, centred) with the rounded x. The
            # exact float sum pairs the rounding errors with q in 0..15 instead: 2x the error.
            xc[r, b] = T.Cast("float32", qsum) * xd[r, b]
        elif avx2:
            xc[r, b] = T.float32(0)  # |w| x (x * sign(w)) is the signed dot itself
        else:
            xc[r, b] = T.Cast("float32", qsum * 128)

    @T.macro
    def quantize_row(m, x, xq, xd, xc, bb):
        """Row m of x -> its ND int8 digit rows m * ND + d of xq, xd, xc."""
        for b in T.serial(NB):
            v: T.let[T.float32x32] = x.vload([m // bb, m % bb, b * BLOCK], "float32x32")
            quantize_digit(m * ND, b, v, xq, xd, xc)
            if residual:  # what the first digit's rounding left, as a second digit
                rest: T.let[T.float32x32] = v - T.Cast("float32x32", T.reinterpret("int8x32", xq.vload([m * ND, b * 8], "int32x8"))) * T.broadcast(xd[m * ND, b], BLOCK)
                quantize_digit(m * ND + 1, b, rest, xq, xd, xc)

    @T.macro
    def body(x, q, scale, mins, y, a, bb):
        with T.sblock("root"):
            T.reads()
            T.writes()
            xq = T.sblock_alloc_buffer((a * bb * ND, K // 4), "int32")
            xd = T.sblock_alloc_buffer((a * bb * ND, NB), "float32")
            xc = T.sblock_alloc_buffer((a * bb * ND, NB), "float32")  # q4_1: block sum of rounded x; q8_0: 128 * sum(xq)
            if a * bb < MU:  # decode: every tile against one (or a few) activation rows
                for m in T.serial(a * bb):
                    quantize_row(m, x, xq, xd, xc, bb)
                for t in T.parallel((G + DU - 1) // DU):
                    with T.sblock("tile"):
                        T.reads()
                        T.writes()
                        acc = T.sblock_alloc_buffer((DU, LANES), "float32")
                        iacc = T.sblock_alloc_buffer((DU * ND, LANES), "int32")
                        wv = T.sblock_alloc_buffer((2 * DU, 64), "uint8")
                        sv = T.sblock_alloc_buffer((DU, LANES), "float32")
                        mv = T.sblock_alloc_buffer((DU, LANES), "float32")
                        for m in T.serial(a * bb):
                            if t * DU + DU <= G:
                                tile(t * DU, DU, m, 1, acc, iacc, wv, sv, mv, xq, xd, xc, q, scale, mins, y, bb, True)
                            else:
                                for g in T.serial(t * DU, G):
                                    tile(g, 1, m, 1, acc, iacc, wv, sv, mv, xq, xd, xc, q, scale, mins, y, bb, False)
            else:  # prefill and batches: MU activation rows share each unpacked weight vector
                for m in T.parallel(a * bb):
                    quantize_row(m, x, xq, xd, xc, bb)
                for mc in T.serial((a * bb + MC - 1) // MC):
                    for t in T.parallel((G + NU - 1) // NU):
                        with T.sblock("tile"):
                            T.reads()
                            T.writes()
                            acc = T.sblock_alloc_buffer((MU * NU, LANES), "float32")
                            iacc = T.sblock_alloc_buffer((MU * NU * ND, LANES), "int32")
                            wv = T.sblock_alloc_buffer((2 * NU, 64), "uint8")
                            sv = T.sblock_alloc_buffer((NU, LANES), "float32")
                            mv = T.sblock_alloc_buffer((NU, LANES), "float32")
                            rows: T.let[T.int64] = T.min(a * bb - mc * MC, MC)
                            if t * NU + NU <= G:
                                for mo in T.serial(rows // MU):
                                    tile(t * NU, NU, mc * MC + mo * MU, MU, acc, iacc, wv, sv, mv, xq, xd, xc, q, scale, mins, y, bb, False)
                                for m in T.serial(mc * MC + rows // MU * MU, mc * MC + rows):
                                    tile(t * NU, NU, m, 1, acc, iacc, wv, sv, mv, xq, xd, xc, q, scale, mins, y, bb, False)
                            else:
                                for g in T.serial(t * NU, G):
                                    for m in T.serial(mc * MC, mc * MC + rows):
                                        tile(g, 1, m, 1, acc, iacc, wv, sv, mv, xq, xd, xc, q, scale, mins, y, bb, False)

    W = WORDS * 64
    if q4:
        @T.prim_func(private=True, s_tir=True)
        def kernel_q4_1(var_x: T.handle, q: T.Buffer((G, NB, W), "uint8"), scale: T.Buffer((G, NB, LANES), "float16"),
                        mins: T.Buffer((G, NB, LANES), "float16"), var_y: T.handle):
            T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
            a = T.int64()
            bb = T.int64()
            x = T.match_buffer(var_x, (a, bb, K), "float32")
            y = T.match_buffer(var_y, (a, bb, N), "float32")
            body(x, q, scale, mins, y, a, bb)
        return kernel_q4_1

    @T.prim_func(private=True, s_tir=True)
    def kernel_q8_0(var_x: T.handle, q: T.Buffer((G, NB, W), "int8"), scale: T.Buffer((G, NB, LANES), "float16"), var_y: T.handle):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        a = T.int64()
        bb = T.int64()
        x = T.match_buffer(var_x, (a, bb, K), "float32")
        y = T.match_buffer(var_y, (a, bb, N), "float32")
        body(x, q, scale, None, y, a, bb)
    return kernel_q8_0


_OPAQUE = 8  # relax OpPatternKind.kOpaque: FuseOps must not merge other ops into this kernel


def _static_shape(ty) -> list[int | None] | None:
    shape = getattr(ty, "shape", None)
    values = getattr(shape, "values", None)
    if values is None:
        return None
    return [int(v) if isinstance(v, tvm.tirx.IntImm) else None for v in values]


def _packed_matmul_calls(mod: tvm.ir.IRModule) -> dict:
    """GlobalVar -> (format, N, K, residual) for every `quant_matmul` PrimFunc (models/quant.py) whose every
    call_tir fits this kernel: float32 [a, b, K] activations and row-interleaved (3-D) weights.
    Shapes are read at the call sites (this TVM's Python API exposes no PrimFunc buffer_map)."""
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
            weights = _static_shape(args[1].ty) if len(args) > 1 else None
            ok = (
                len(args) == (4 if fmt == "q4_1" else 3)
                and x is not None and out is not None and len(x) == 3 and len(out) == 3
                and weights is not None and len(weights) == 3  # row-interleaved layout
                and args[0].ty.dtype == "float32"
                and x[-1] is not None and out[-1] is not None
                and x[-1] % BLOCK == 0 and out[-1] % ROW_GROUP == 0
            )
            residual = gv.name_hint.startswith(f"{fmt}_matmul{RESIDUAL_SUFFIX}")
            shape = (fmt, out[-1], x[-1], residual) if ok else None
            if shape is None or found.get(gv, shape) != shape:
                rejected.add(gv)
            else:
                found[gv] = shape

    for func in mod.functions.values():
        if isinstance(func, relax.Function):
            _Visitor().visit_expr(func)
    return {gv: shape for gv, shape in found.items() if gv not in rejected}


def replace_packed_matmuls() -> tvm.transform.Pass:
    """Module pass (before FuseOps): swap every row-interleaved packed-weight matmul PrimFunc that
    fits this kernel ([a, b, K] float32 activations) for it, for the current target. The caller
    checks `supported(target)`."""

    @tvm.transform.module_pass(opt_level=0, name="tvmlm_int8_matmul")
    def _pass(mod: tvm.ir.IRModule, _ctx: tvm.transform.PassContext) -> tvm.ir.IRModule:
        # One kernel per (format, N, K): prefill, decode and the batch functions each export their
        # own copy of a weight's matmul, and each int8 kernel takes seconds of LLVM time.
        kernel_isa = isa(tvm.target.Target.current())
        canonical: dict = {}
        remap = {}
        for gv, shape in _packed_matmul_calls(mod).items():
            if shape in canonical:
                remap[gv] = canonical[shape]
                continue
            canonical[shape] = gv
            attrs = {**dict(mod[gv].attrs or {}), "op_pattern": _OPAQUE, "tirx.is_scheduled": True}
            fmt, n_out, k_in, residual = shape
            mod[gv] = int8_matmul(fmt, n_out, k_in, isa=kernel_isa, residual=residual).with_attrs(attrs)
        return _redirect_calls(mod, remap) if remap else mod

    return _pass


def _redirect_calls(mod: tvm.ir.IRModule, remap: dict) -> tvm.ir.IRModule:
    """`mod` with every call_tir of a GlobalVar in `remap` calling its replacement instead, and the
    replaced PrimFuncs removed."""
    from tvm import relax

    @relax.expr_functor.mutator
    class _Redirect(relax.PyExprMutator):
        def visit_call_(self, call):  # noqa: N802
            call = super().visit_call_(call)
            if isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.call_tir" and call.args[0] in remap:
                return relax.Call(call.op, [remap[call.args[0]], *call.args[1:]], call.attrs, call.ty_args, call.span)
            return call

    for gv, func in list(mod.functions.items()):
        if isinstance(func, relax.Function):
            mod[gv] = _Redirect().visit_expr(func)
    for gv in remap:
        del mod[gv]
    return mod
