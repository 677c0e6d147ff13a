//! Encoding a long text on all cores. The text is cut at line breaks, and the pieces are
//! encoded in parallel and joined. A cut is kept only where encoding the text on either side
//! apart gives exactly the tokens of encoding across it, checked on a window of text around
//! the cut: tokenizers that prefix every text they encode (SentencePiece's `▁`) or merge
//! tokens across line breaks fail the check and keep their text whole there. The check
//! relies on tokenization being local (a regex pre-tokenizer's pieces are short), so a
//! window of [`CHECK_WINDOW_BYTES`] on each side decides what the whole text does. The cuts
//! are searched on all cores too: each check encodes a few kilobytes, and a text has about 4
//! pieces per core, so one after the other the checks grew with the cores.

use super::tokenizer::TextTokenizer;
use crate::error::Result;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Texts shorter than this are encoded in one piece.
pub const MIN_PARALLEL_BYTES: usize = 256 << 10;

/// Bytes of text checked on each side of a cut.
pub const CHECK_WINDOW_BYTES: usize = 2048;

/// Line breaks tried after each target position before that cut is given up.
const CANDIDATES_PER_CUT: usize = 8;

/// A long text's tokens, and how many cuts it was encoded in parallel at.
#[derive(Debug, Clone, PartialEq)]
pub struct ParallelEncoding {
    /// The tokens of the whole text.
    pub ids: Vec<u32>,
    /// Cuts kept (pieces minus one).
    pub cuts: usize,
}

/// The largest char boundary at or before `at`.
fn floor_boundary(text: &str, at: usize) -> usize {
    let mut at = at.min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

/// The smallest char boundary at or after `at`.
fn ceil_boundary(text: &str, at: usize) -> usize {
    let mut at = at.min(text.len());
    while !text.is_char_boundary(at) {
        at += 1;
    }
    at
}

/// Whether cutting `text` at byte `cut` leaves its tokens as they are (on a window around it).
fn cut_keeps_tokens(tokenizer: &TextTokenizer, text: &str, cut: usize) -> Result<bool> {
    let start = floor_boundary(text, cut.saturating_sub(CHECK_WINDOW_BYTES));
    let end = ceil_boundary(text, cut + CHECK_WINDOW_BYTES);
    let whole = tokenizer.encode(&text[start..end])?;
    let mut apart = tokenizer.encode(&text[start..cut])?;
    apart.extend(tokenizer.encode(&text[cut..end])?);
    Ok(whole == apart)
}

/// The first line break at or after `target` (after a character that is not whitespace, so a
/// run of whitespace is never split) where [`cut_keeps_tokens`] holds, trying at most
/// [`CANDIDATES_PER_CUT`] of them.
fn cut_after(tokenizer: &TextTokenizer, text: &str, target: usize) -> Result<Option<usize>> {
    let bytes = text.as_bytes();
    let mut at = target;
    let mut tried = 0;
    while tried < CANDIDATES_PER_CUT {
        let Some(offset) = bytes[at..].iter().position(|&b| b == b'\n') else {
            break;
        };
        let cut = at + offset;
        at = cut + 1;
        if cut == 0 || bytes[cut - 1].is_ascii_whitespace() || cut + 1 >= text.len() {
            continue;
        }
        tried += 1;
        if cut_keeps_tokens(tokenizer, text, cut)? {
            return Ok(Some(cut));
        }
    }
    Ok(None)
}

/// Cut positions about every `piece_bytes` ([`cut_after`] each multiple of it), searched on
/// `threads` threads, in increasing order (a search that ran past the next one's cut drops it).
fn find_cuts(
    tokenizer: &TextTokenizer,
    text: &str,
    piece_bytes: usize,
    threads: usize,
) -> Result<Vec<usize>> {
    let targets: Vec<usize> = (1..)
        .map(|i| i * piece_bytes)
        .take_while(|target| target + piece_bytes / 2 < text.len())
        .collect();
    let mut found: Vec<Result<Option<usize>>> = targets.iter().map(|_| Ok(None)).collect();
    crate::cpu::threads::for_each_chunk_mut(&mut found, 1, threads, |i, slot| {
        slot[0] = cut_after(tokenizer, text, targets[i]);
    });
    let mut cuts: Vec<usize> = Vec::with_capacity(found.len());
    for cut in found {
        if let Some(cut) = cut?
            && cuts.last().is_none_or(|&last| cut > last)
        {
            cuts.push(cut);
        }
    }
    Ok(cuts)
}

/// The tokens of `text` (as [`TextTokenizer::encode`] gives them), encoded in pieces of about
/// `piece_bytes` on `threads` threads.
pub fn encode_in_pieces(
    tokenizer: &TextTokenizer,
    text: &str,
    threads: usize,
    piece_bytes: usize,
) -> Result<ParallelEncoding> {
    if threads <= 1 || text.len() < 2 * piece_bytes {
        return Ok(ParallelEncoding {
            ids: tokenizer.encode(text)?,
            cuts: 0,
        });
    }
    let cuts = find_cuts(tokenizer, text, piece_bytes, threads)?;
    let bounds: Vec<usize> = std::iter::once(0)
        .chain(cuts.iter().copied())
        .chain(std::iter::once(text.len()))
        .collect();
    let pieces: Vec<&str> = bounds.windows(2).map(|w| &text[w[0]..w[1]]).collect();
    let ids = encode_each(tokenizer, &pieces, threads)?.concat();
    Ok(ParallelEncoding {
        ids,
        cuts: cuts.len(),
    })
}

/// The tokens of each of `texts`, in order, encoded on `threads` threads (each text whole).
pub fn encode_each(
    tokenizer: &TextTokenizer,
    texts: &[&str],
    threads: usize,
) -> Result<Vec<Vec<u32>>> {
    if threads <= 1 || texts.len() <= 1 {
        return texts.iter().map(|t| tokenizer.encode(t)).collect();
    }
    let results: Vec<Mutex<Option<Result<Vec<u32>>>>> =
        texts.iter().map(|_| Mutex::new(None)).collect();
    let next = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..threads.min(texts.len()) {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(text) = texts.get(i) else {
                        break;
                    };
                    let encoded = tokenizer.encode(text);
                    *results[i].lock().expect("not poisoned") = Some(encoded);
                }
            });
        }
    });
    results
        .into_iter()
        .map(|slot| {
            slot.into_inner()
                .expect("not poisoned")
                .expect("every text encoded")
        })
        .collect()
}

/// Threads to encode on: the machine's cores.
pub fn encode_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The tokens of `text` on all cores (one piece below [`MIN_PARALLEL_BYTES`]).
pub fn encode_on_all_cores(tokenizer: &TextTokenizer, text: &str) -> Result<Vec<u32>> {
    if text.len() < MIN_PARALLEL_BYTES {
        return tokenizer.encode(text);
    }
    let threads = encode_threads();
    // A few pieces per thread, so one slow piece does not hold the others up.
    let piece_bytes = (text.len() / (4 * threads)).max(MIN_PARALLEL_BYTES / 4);
    Ok(encode_in_pieces(tokenizer, text, threads, piece_bytes)?.ids)
}
