//! Host staging: each step's index arrays and sampling instructions are
//! written at fixed places of one buffer and copied up from there; its
//! sampled tokens come back into another. Either may be page-locked
//! (`LHAMA_PINNED_STAGING`), so that a copy is one DMA the driver enqueues
//! rather than a copy through its own bounce buffer first.

use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaStream, PinnedHostSlice};
use lhama_model::{ForwardBatch, RowSampling};

use super::workspace::Workspace;
use crate::CudaError;
use crate::kernels::{Kernels, SAMPLE_PARAM_WORDS, sample_params};

/// Where each array sits in the upload buffer (in u32s).
#[derive(Debug, Clone, Copy)]
struct Layout {
    tokens: usize,
    positions: usize,
    slots: usize,
    seq_of: usize,
    tiles: usize,
    rows: usize,
    params: usize,
    tables: usize,
    len: usize,
}

impl Layout {
    fn new(t: usize, max_seqs: usize, max_blocks: usize) -> Self {
        let tokens = 0;
        let positions = tokens + t;
        let slots = positions + t;
        let seq_of = slots + t;
        let tiles = seq_of + t;
        let rows = tiles + 2 * t;
        let params = rows + t;
        let tables = params + t * SAMPLE_PARAM_WORDS;
        Self {
            tokens,
            positions,
            slots,
            seq_of,
            tiles,
            rows,
            params,
            tables,
            len: tables + max_seqs * max_blocks,
        }
    }
}

/// Host memory a step copies from or into: page-locked, or ordinary
/// (the driver then stages small copies itself).
enum HostBuf {
    Pinned(PinnedHostSlice<u32>),
    Pageable(Vec<u32>),
}

impl HostBuf {
    /// `len` zeroed u32s; page-locked when `pinned` (write-combined when
    /// `write_combined`: for memory the host only writes).
    fn new(
        ctx: &Arc<CudaContext>,
        len: usize,
        pinned: bool,
        write_combined: bool,
    ) -> Result<Self, CudaError> {
        if !pinned {
            return Ok(Self::Pageable(vec![0; len]));
        }
        let flags = if write_combined {
            cudarc::driver::sys::CU_MEMHOSTALLOC_WRITECOMBINED
        } else {
            0
        };
        // SAFETY: u32 is valid for any bits, and the memory is zeroed here.
        let mut p = unsafe { ctx.alloc_pinned_with_flags::<u32>(len, flags)? };
        p.as_mut_slice()?.fill(0);
        Ok(Self::Pinned(p))
    }

    fn slice(&mut self) -> Result<&mut [u32], CudaError> {
        Ok(match self {
            Self::Pinned(p) => p.as_mut_slice()?,
            Self::Pageable(v) => v.as_mut_slice(),
        })
    }

    /// Page-locked bytes held.
    fn pinned_bytes(&self) -> usize {
        match self {
            Self::Pinned(p) => p.num_bytes(),
            Self::Pageable(_) => 0,
        }
    }
}

/// Which staging buffers are page-locked: `LHAMA_PINNED_STAGING` = `up`,
/// `down`, `both` or `none` (default `both`).
fn pinned_choice() -> (bool, bool) {
    match std::env::var("LHAMA_PINNED_STAGING").as_deref() {
        Ok("none") | Ok("0") => (false, false),
        Ok("up") => (true, false),
        Ok("down") => (false, true),
        _ => (true, true),
    }
}

pub(super) struct Staging {
    /// Written by the host, read by the device only (write-combined when
    /// page-locked).
    up: HostBuf,
    /// The sampled tokens.
    down: HostBuf,
    layout: Layout,
    max_blocks: usize,
    block_size: usize,
    /// (first token, count) query tiles of the uploaded batch, as on the device.
    pub tiles: Vec<u32>,
    /// Longest context (last position + 1) of the uploaded batch.
    pub context: usize,
    masks: Vec<u32>,
    /// Copies from `up` may still be queued: wait before writing it again.
    in_flight: bool,
}

impl Staging {
    pub fn new(
        ctx: &Arc<CudaContext>,
        t: usize,
        max_seqs: usize,
        max_blocks: usize,
        block_size: usize,
    ) -> Result<Self, CudaError> {
        let layout = Layout::new(t, max_seqs, max_blocks);
        let (pin_up, pin_down) = pinned_choice();
        Ok(Self {
            up: HostBuf::new(ctx, layout.len, pin_up, true)?,
            down: HostBuf::new(ctx, t, pin_down, false)?,
            layout,
            max_blocks,
            block_size,
            tiles: Vec::with_capacity(2 * t),
            context: 1,
            masks: Vec::new(),
            in_flight: false,
        })
    }

    /// Page-locked bytes held.
    pub fn bytes(&self) -> usize {
        self.up.pinned_bytes() + self.down.pinned_bytes()
    }

    /// Stages and uploads the batch's index arrays (tokens, positions, K/V
    /// slots, each token's sequence, query tiles, padded block tables) and
    /// the logit rows with their sampling instructions.
    pub fn upload(
        &mut self,
        stream: &Arc<CudaStream>,
        ws: &mut Workspace,
        batch: &ForwardBatch<'_>,
        sampling: &[RowSampling],
    ) -> Result<(), CudaError> {
        if self.in_flight {
            // A step that failed between its upload and its copy back.
            stream.synchronize()?;
            self.in_flight = false;
        }
        let (bs, mb, o) = (self.block_size, self.max_blocks, self.layout);
        let t = batch.tokens.len();
        let r = batch.logit_rows.len();
        let buf = self.up.slice()?;
        buf[o.tokens..o.tokens + t].copy_from_slice(batch.tokens);
        buf[o.positions..o.positions + t].copy_from_slice(batch.positions);
        let mut i = 0;
        for (si, seq) in batch.seqs.iter().enumerate() {
            let row = &mut buf[o.tables + si * mb..o.tables + (si + 1) * mb];
            row.fill(0);
            row[..seq.block_table.len()].copy_from_slice(seq.block_table);
            for &p in &batch.positions[seq.token_start..seq.token_start + seq.num_tokens] {
                let p = p as usize;
                buf[o.slots + i] = seq.block_table[p / bs] * bs as u32 + (p % bs) as u32;
                buf[o.seq_of + i] = si as u32;
                i += 1;
            }
        }
        self.context = batch.positions.iter().max().map_or(1, |&p| p as usize + 1);
        self.tiles.clear();
        Kernels::attention_tiles(batch.seqs, batch.positions, &mut self.tiles);
        let tl = self.tiles.len();
        buf[o.tiles..o.tiles + tl].copy_from_slice(&self.tiles);
        buf[o.rows..o.rows + r].copy_from_slice(batch.logit_rows);
        for (j, how) in sampling.iter().enumerate() {
            let at = o.params + j * SAMPLE_PARAM_WORDS;
            buf[at..at + SAMPLE_PARAM_WORDS].copy_from_slice(&sample_params(how));
        }
        self.in_flight = true;
        let table_len = batch.seqs.len() * mb;
        let s = stream;
        s.memcpy_htod(&buf[o.tokens..o.tokens + t], &mut ws.tokens.slice_mut(0..t))?;
        s.memcpy_htod(
            &buf[o.positions..o.positions + t],
            &mut ws.positions.slice_mut(0..t),
        )?;
        s.memcpy_htod(&buf[o.slots..o.slots + i], &mut ws.slots.slice_mut(0..i))?;
        s.memcpy_htod(&buf[o.seq_of..o.seq_of + i], &mut ws.seq_of.slice_mut(0..i))?;
        s.memcpy_htod(&buf[o.tiles..o.tiles + tl], &mut ws.tiles.slice_mut(0..tl))?;
        s.memcpy_htod(
            &buf[o.tables..o.tables + table_len],
            &mut ws.tables.slice_mut(0..table_len),
        )?;
        if r > 0 {
            s.memcpy_htod(&buf[o.rows..o.rows + r], &mut ws.rows.slice_mut(0..r))?;
            let words = r * SAMPLE_PARAM_WORDS;
            s.memcpy_htod(
                &buf[o.params..o.params + words],
                &mut ws.sample_params.slice_mut(0..words),
            )?;
        }
        Ok(())
    }

    /// Uploads the step's token masks as [r, words] (all ones for the rows
    /// without one); false when the step has none. (From pageable memory:
    /// a masked step is rare and its masks large.)
    pub fn upload_masks(
        &mut self,
        stream: &Arc<CudaStream>,
        ws: &mut Workspace,
        masks: &[(usize, Vec<u32>)],
        r: usize,
        vocab: usize,
    ) -> Result<bool, CudaError> {
        if masks.is_empty() {
            return Ok(false);
        }
        let words = Kernels::mask_words(vocab);
        if ws.masks.is_none() {
            ws.masks = Some(stream.alloc_zeros(ws.rows.len() * words)?);
        }
        self.masks.clear();
        self.masks.resize(r * words, u32::MAX);
        for (row, w) in masks {
            let dst = &mut self.masks[row * words..(row + 1) * words];
            let n = w.len().min(words);
            dst[..n].copy_from_slice(&w[..n]);
            dst[n..].fill(0);
        }
        if let Some(m) = ws.masks.as_mut() {
            stream.memcpy_htod(&self.masks, &mut m.slice_mut(0..r * words))?;
        }
        Ok(true)
    }

    /// The step's sampled tokens and the logits of the rows asking for
    /// them; waits for the step to finish.
    pub fn copy_back(
        &mut self,
        stream: &Arc<CudaStream>,
        ws: &Workspace,
        sampling: &[RowSampling],
        vocab: usize,
        tokens: &mut Vec<u32>,
        logits: &mut Vec<f32>,
    ) -> Result<(), CudaError> {
        let r = sampling.len();
        let sampled = sampling.iter().any(|s| *s != RowSampling::Logits);
        let down = self.down.slice()?;
        if sampled {
            stream.memcpy_dtoh(&ws.sampled.slice(0..r), &mut down[..r])?;
        }
        logits.resize(r * vocab, 0.0);
        // Runs of consecutive rows asking for logits, one copy each.
        let mut i = 0;
        while i < r {
            if sampling[i] != RowSampling::Logits {
                i += 1;
                continue;
            }
            let start = i;
            while i < r && sampling[i] == RowSampling::Logits {
                i += 1;
            }
            stream.memcpy_dtoh(
                &ws.logits.slice(start * vocab..i * vocab),
                &mut logits[start * vocab..i * vocab],
            )?;
        }
        stream.synchronize()?;
        self.in_flight = false;
        tokens.clear();
        if sampled {
            tokens.extend_from_slice(&down[..r]);
        } else {
            tokens.resize(r, 0);
        }
        Ok(())
    }
}
