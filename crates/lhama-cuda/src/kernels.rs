//! Typed launchers for the kernels in kernels/*.cu. Each checks the sizes it
//! relies on before the unsafe launch; a wrong size is an error, not a
//! device fault.

use std::sync::Arc;

use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, CudaView, CudaViewMut,
    LaunchConfig, PushKernelArg,
};
use half::f16;

use crate::CudaError;
use crate::compile;

/// AWQ rows per launch of the GEMV kernel (AWQ_MAX_M in awq.cu).
pub const AWQ_MAX_M: usize = 8;
/// Input rows one GEMV block covers (AWQ_ROWS_PER_BLOCK in awq.cu).
pub const AWQ_ROWS_PER_BLOCK: usize = 128;

/// Chunks of at most this many rows add their split-K partials up in the
/// GEMV launch itself; larger ones use the separate reduce kernel.
pub const AWQ_FUSED_MAX_ROWS: usize = 2;

/// Tile counters the GEMV needs for N outputs (one per 256 columns).
pub fn counters_len(n: usize) -> usize {
    n.div_ceil(256)
}
/// Warps per attention block (ATTN_WARPS in attention.cu).
pub const ATTENTION_WARPS: usize = 8;
/// Context positions one attention block handles (ATTN_PART in attention.cu).
pub const ATTENTION_PART: usize = 64;
/// Largest head_dim the attention kernel handles (4 dimensions per lane).
pub const ATTENTION_MAX_HEAD_DIM: usize = 128;

/// An AWQ layer on the device (see `lhama_model::weights::FusedAwq`).
pub struct GpuAwq {
    pub k: usize,
    pub n: usize,
    pub group: usize,
    /// [K, N/8]
    pub qweight: CudaSlice<u32>,
    /// [K/G, N]
    pub zeros: CudaSlice<f32>,
    /// [K/G, N]
    pub scales: CudaSlice<f32>,
}

impl GpuAwq {
    pub fn upload(
        stream: &Arc<CudaStream>,
        f: &lhama_model::weights::FusedAwq,
    ) -> Result<Self, CudaError> {
        Ok(Self {
            k: f.k,
            n: f.n,
            group: f.group,
            qweight: stream.clone_htod(&f.qweight)?,
            zeros: stream.clone_htod(&f.zeros)?,
            scales: stream.clone_htod(&f.scales)?,
        })
    }

    /// Floats of split-K partial sums one launch of up to AWQ_MAX_M rows needs.
    pub fn partial_len(&self) -> usize {
        self.k.div_ceil(AWQ_ROWS_PER_BLOCK) * AWQ_MAX_M * self.n
    }

    pub fn bytes(&self) -> usize {
        self.qweight.num_bytes() + self.zeros.num_bytes() + self.scales.num_bytes()
    }
}

pub struct Kernels {
    _module: Arc<CudaModule>,
    embedding: CudaFunction,
    add_rmsnorm: CudaFunction,
    silu_mul: CudaFunction,
    /// GEMV partial-sum kernels for 1, 2, 4 and 8 rows, with their warps per block.
    awq_partial: [(usize, usize, CudaFunction); 4],
    rope_kv: CudaFunction,
    awq_reduce: CudaFunction,
    attention_partial: CudaFunction,
    attention_combine: CudaFunction,
    lm_head: CudaFunction,
}

fn grid(n: usize, per_block: usize) -> u32 {
    n.div_ceil(per_block).max(1) as u32
}

fn check(ok: bool, what: &str) -> Result<(), CudaError> {
    if ok {
        Ok(())
    } else {
        Err(CudaError::Driver(format!("kernel launch refused: {what}")))
    }
}

fn i32_of(v: usize) -> i32 {
    i32::try_from(v).expect("sizes are validated far below i32::MAX at load")
}

impl Kernels {
    /// Compiles (NVRTC) and loads every kernel for the context's device.
    pub fn load(ctx: &Arc<CudaContext>) -> Result<Self, CudaError> {
        let (major, minor) = ctx.compute_capability()?;
        let arch = compile::arch_for(major, minor).ok_or(CudaError::TooOld {
            name: ctx.name()?,
            major,
            minor,
        })?;
        let ptx = compile::compile(arch)?;
        let module = ctx.load_module(ptx)?;
        let f = |name: &str| module.load_function(name);
        Ok(Self {
            embedding: f("embedding_gather_f16_f32")?,
            add_rmsnorm: f("add_rmsnorm_f32")?,
            silu_mul: f("silu_mul_f32")?,
            awq_partial: [
                (1, 16, f("awq_gemv_partial_m1_f32")?),
                (2, 16, f("awq_gemv_partial_m2_f32")?),
                (4, 8, f("awq_gemv_partial_m4_f32")?),
                (8, 4, f("awq_gemv_partial_m8_f32")?),
            ],
            rope_kv: f("rope_kv_write_f32")?,
            awq_reduce: f("awq_reduce_partials_f32")?,
            attention_partial: f("paged_attention_partial_f32")?,
            attention_combine: f("paged_attention_combine_f32")?,
            lm_head: f("lm_head_f16_f32")?,
            _module: module,
        })
    }

    /// x[T, hidden] = table[tokens[t]].
    pub fn embedding(
        &self,
        s: &CudaStream,
        table: &CudaSlice<f16>,
        tokens: &CudaView<'_, u32>,
        x: &mut CudaViewMut<'_, f32>,
        hidden: usize,
    ) -> Result<(), CudaError> {
        let t = tokens.len();
        check(
            x.len() >= t * hidden && table.len() % hidden == 0,
            "embedding sizes",
        )?;
        let h = i32_of(hidden);
        let cfg = LaunchConfig {
            grid_dim: (t as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: table holds vocab * hidden f16, tokens < vocab (validated with the
        // batch), x holds t * hidden f32 (checked above).
        unsafe {
            s.launch_builder(&self.embedding)
                .arg(table)
                .arg(tokens)
                .arg(x)
                .arg(&h)
                .launch(cfg)
        }?;
        Ok(())
    }

    /// x += delta (when given); out = rmsnorm(x) * weight, for `rows` rows.
    #[allow(clippy::too_many_arguments)]
    pub fn add_rmsnorm(
        &self,
        s: &CudaStream,
        x: &mut CudaViewMut<'_, f32>,
        delta: Option<&CudaView<'_, f32>>,
        weight: &CudaSlice<f32>,
        out: &mut CudaViewMut<'_, f32>,
        rows: usize,
        eps: f32,
    ) -> Result<(), CudaError> {
        let hidden = weight.len();
        check(
            x.len() >= rows * hidden && out.len() >= rows * hidden,
            "rmsnorm sizes",
        )?;
        check(
            delta.is_none_or(|d| d.len() >= rows * hidden),
            "rmsnorm delta size",
        )?;
        let h = i32_of(hidden);
        let cfg = LaunchConfig {
            grid_dim: (rows as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let null = 0u64;
        let mut b = s.launch_builder(&self.add_rmsnorm);
        b.arg(x);
        match delta {
            Some(d) => b.arg(d),
            None => b.arg(&null),
        };
        // SAFETY: x, delta and out hold rows * hidden f32 and weight hidden f32
        // (checked above); a null delta is allowed by the kernel.
        unsafe { b.arg(weight).arg(out).arg(&h).arg(&eps).launch(cfg) }?;
        Ok(())
    }

    /// out[T, inter] = silu(gate) * up from gate_up[T, 2 * inter].
    pub fn silu_mul(
        &self,
        s: &CudaStream,
        gate_up: &CudaView<'_, f32>,
        out: &mut CudaViewMut<'_, f32>,
        tokens: usize,
        inter: usize,
    ) -> Result<(), CudaError> {
        check(
            gate_up.len() >= tokens * 2 * inter && out.len() >= tokens * inter,
            "silu sizes",
        )?;
        let (t, i) = (i32_of(tokens), i32_of(inter));
        let cfg = LaunchConfig {
            grid_dim: (grid(tokens * inter, 256), 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: sizes checked above.
        unsafe {
            s.launch_builder(&self.silu_mul)
                .arg(gate_up)
                .arg(out)
                .arg(&t)
                .arg(&i)
                .launch(cfg)
        }?;
        Ok(())
    }

    /// y[M, N] = x[M, K] · W, in chunks of 8, 4, 2 or 1 rows; `partial` holds
    /// at least `w.partial_len()` floats and `counters` (zero) at least
    /// `counters_len(N)` entries.
    #[allow(clippy::too_many_arguments)]
    pub fn awq_matmul(
        &self,
        s: &CudaStream,
        x: &CudaView<'_, f32>,
        m: usize,
        w: &GpuAwq,
        partial: &mut CudaSlice<f32>,
        counters: &mut CudaSlice<u32>,
        y: &mut CudaViewMut<'_, f32>,
    ) -> Result<(), CudaError> {
        check(x.len() >= m * w.k && y.len() >= m * w.n, "awq x/y sizes")?;
        check(partial.len() >= w.partial_len(), "awq partial buffer")?;
        check(counters.len() >= counters_len(w.n), "awq counters")?;
        check(
            w.n % 8 == 0 && w.group % 32 == 0 && w.k % w.group == 0,
            "awq shape",
        )?;
        let splits = w.k.div_ceil(AWQ_ROWS_PER_BLOCK);
        let (k, n, g) = (i32_of(w.k), i32_of(w.n), i32_of(w.group));
        let mut row = 0;
        while row < m {
            // The largest kernel variant (8, 4, 2 or 1 rows) that fits what is left.
            let (rows, warps, func) = self
                .awq_partial
                .iter()
                .rev()
                .find(|(v, _, _)| *v <= m - row)
                .map(|(v, w, f)| (*v, *w, f))
                .expect("the 1-row variant always fits");
            let xs = x.slice(row * w.k..(row + rows) * w.k);
            let mut ys = y.slice_mut(row * w.n..(row + rows) * w.n);
            let fused = i32::from(rows <= AWQ_FUSED_MAX_ROWS);
            let cfg = LaunchConfig {
                grid_dim: (grid(w.n / 8, 32), splits as u32, 1),
                block_dim: (32, warps as u32, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: xs holds rows * K, qweight K * N/8, zeros/scales K/G * N,
            // partial splits * rows * N, ys rows * N, counters one per 256
            // columns, all zero (checked above; each fused launch re-arms them).
            unsafe {
                s.launch_builder(func)
                    .arg(&xs)
                    .arg(&w.qweight)
                    .arg(&w.zeros)
                    .arg(&w.scales)
                    .arg(&mut *partial)
                    .arg(&mut ys)
                    .arg(&mut *counters)
                    .arg(&k)
                    .arg(&n)
                    .arg(&g)
                    .arg(&fused)
                    .launch(cfg)
            }?;
            if fused == 0 {
                let (sp, r) = (i32_of(splits), i32_of(rows));
                let cfg = LaunchConfig {
                    grid_dim: (grid(rows * w.n, 256), 1, 1),
                    block_dim: (256, 1, 1),
                    shared_mem_bytes: 0,
                };
                // SAFETY: partial holds splits * rows * N written above; ys rows * N.
                unsafe {
                    s.launch_builder(&self.awq_reduce)
                        .arg(&*partial)
                        .arg(&mut ys)
                        .arg(&sp)
                        .arg(&r)
                        .arg(&n)
                        .launch(cfg)
                }?;
            }
            row += rows;
        }
        Ok(())
    }

    /// Rotates q and k of every token and writes k, v into their slots.
    #[allow(clippy::too_many_arguments)]
    pub fn rope_kv_write(
        &self,
        s: &CudaStream,
        qkv: &CudaView<'_, f32>,
        positions: &CudaView<'_, u32>,
        cos: &CudaSlice<f32>,
        sin: &CudaSlice<f32>,
        slots: &CudaView<'_, u32>,
        q_out: &mut CudaViewMut<'_, f32>,
        k_cache: &mut CudaSlice<f32>,
        v_cache: &mut CudaSlice<f32>,
        shape: (usize, usize, usize),
    ) -> Result<(), CudaError> {
        let (heads, kv_heads, hd) = shape;
        let t = positions.len();
        check(
            slots.len() == t
                && qkv.len() >= t * (heads + 2 * kv_heads) * hd
                && q_out.len() >= t * heads * hd,
            "rope sizes",
        )?;
        let (h, kvh, d) = (i32_of(heads), i32_of(kv_heads), i32_of(hd));
        let cfg = LaunchConfig {
            grid_dim: (t as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: positions < max positions of the tables and slots inside the
        // caches (validated with the batch); buffer sizes checked above.
        unsafe {
            s.launch_builder(&self.rope_kv)
                .arg(qkv)
                .arg(positions)
                .arg(cos)
                .arg(sin)
                .arg(slots)
                .arg(q_out)
                .arg(k_cache)
                .arg(v_cache)
                .arg(&h)
                .arg(&kvh)
                .arg(&d)
                .launch(cfg)
        }?;
        Ok(())
    }

    /// Context partitions of `max_context` positions (ATTN_PART in attention.cu).
    pub fn attention_parts(max_context: usize) -> usize {
        max_context.div_ceil(ATTENTION_PART)
    }

    /// Floats of attention workspace for `tokens` tokens.
    pub fn attention_work_len(
        tokens: usize,
        heads: usize,
        head_dim: usize,
        max_context: usize,
    ) -> usize {
        tokens * heads * Self::attention_parts(max_context) * (head_dim + 2)
    }

    /// Causal paged attention of every query token over its sequence, split
    /// over the context and combined (two launches).
    #[allow(clippy::too_many_arguments)]
    pub fn paged_attention(
        &self,
        s: &CudaStream,
        q: &CudaView<'_, f32>,
        k_cache: &CudaSlice<f32>,
        v_cache: &CudaSlice<f32>,
        block_tables: &CudaView<'_, u32>,
        seq_of: &CudaView<'_, u32>,
        positions: &CudaView<'_, u32>,
        work: &mut CudaSlice<f32>,
        out: &mut CudaViewMut<'_, f32>,
        shape: (usize, usize, usize),
        block_size: usize,
        max_blocks: usize,
        max_context: usize,
    ) -> Result<(), CudaError> {
        let (heads, kv_heads, hd) = shape;
        let t = positions.len();
        check(
            hd % 32 == 0 && hd <= ATTENTION_MAX_HEAD_DIM,
            "head_dim must be a multiple of 32, at most 128",
        )?;
        check(
            seq_of.len() == t && q.len() >= t * heads * hd && out.len() >= t * heads * hd,
            "attention sizes",
        )?;
        let parts = Self::attention_parts(max_context);
        check(
            work.len() >= Self::attention_work_len(t, heads, hd, max_context),
            "attention workspace",
        )?;
        let (h, kvh, d, bs, mb, mp) = (
            i32_of(heads),
            i32_of(kv_heads),
            i32_of(hd),
            i32_of(block_size),
            i32_of(max_blocks),
            i32_of(parts),
        );
        let scale = 1.0f32 / (hd as f32).sqrt();
        let cfg = LaunchConfig {
            grid_dim: (t as u32, heads as u32, parts as u32),
            block_dim: (32 * ATTENTION_WARPS as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: every table entry < blocks, every seq_of < rows of
        // block_tables and every position < max_context (validated with the
        // batch; max_context is the model's max positions), so partitions stay
        // inside `work`; sizes checked above.
        unsafe {
            s.launch_builder(&self.attention_partial)
                .arg(q)
                .arg(k_cache)
                .arg(v_cache)
                .arg(block_tables)
                .arg(seq_of)
                .arg(positions)
                .arg(&mut *work)
                .arg(&h)
                .arg(&kvh)
                .arg(&d)
                .arg(&bs)
                .arg(&mb)
                .arg(&mp)
                .arg(&scale)
                .launch(cfg)
        }?;
        let cfg = LaunchConfig {
            grid_dim: (t as u32, heads as u32, 1),
            block_dim: (hd as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: the partitions a token has were written above; out holds t * heads * hd.
        unsafe {
            s.launch_builder(&self.attention_combine)
                .arg(&*work)
                .arg(positions)
                .arg(out)
                .arg(&h)
                .arg(&d)
                .arg(&mp)
                .launch(cfg)
        }?;
        Ok(())
    }

    /// logits[R, vocab] for the rows `rows` of xn[T, hidden].
    pub fn lm_head(
        &self,
        s: &CudaStream,
        xn: &CudaView<'_, f32>,
        rows: &CudaView<'_, u32>,
        weight: &CudaSlice<f16>,
        logits: &mut CudaViewMut<'_, f32>,
        hidden: usize,
    ) -> Result<(), CudaError> {
        let vocab = weight.len() / hidden;
        let r = rows.len();
        check(
            logits.len() >= r * vocab && weight.len() == vocab * hidden && hidden % 8 == 0,
            "lm_head sizes (hidden must be a multiple of 8)",
        )?;
        let (nr, h, v) = (i32_of(r), i32_of(hidden), i32_of(vocab));
        let cfg = LaunchConfig {
            grid_dim: (grid(vocab, 8), 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: rows index into xn's rows (validated with the batch); sizes checked above.
        unsafe {
            s.launch_builder(&self.lm_head)
                .arg(xn)
                .arg(rows)
                .arg(weight)
                .arg(logits)
                .arg(&nr)
                .arg(&h)
                .arg(&v)
                .launch(cfg)
        }?;
        Ok(())
    }
}
