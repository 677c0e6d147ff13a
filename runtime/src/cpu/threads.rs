//! Splitting work over CPU cores with scoped threads.

/// Threads to use when the user does not say: `LAYERSTREAM_THREADS`, else every core.
pub fn default_thread_count() -> usize {
    std::env::var("LAYERSTREAM_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Calls `work(chunk_index, chunk)` for every `chunk_len`-sized chunk of `data` (the last
/// may be shorter), spreading contiguous runs of chunks over at most `threads` threads.
pub fn for_each_chunk_mut<T, F>(data: &mut [T], chunk_len: usize, threads: usize, work: F)
where
    T: Send,
    F: Fn(usize, &mut [T]) + Sync,
{
    let chunk_len = chunk_len.max(1);
    let num_chunks = data.len().div_ceil(chunk_len);
    let threads = threads.clamp(1, num_chunks.max(1));
    if threads == 1 {
        for (index, chunk) in data.chunks_mut(chunk_len).enumerate() {
            work(index, chunk);
        }
        return;
    }
    let chunks_per_thread = num_chunks.div_ceil(threads);
    let work = &work;
    std::thread::scope(|scope| {
        let mut rest = data;
        let mut first_chunk = 0;
        while !rest.is_empty() {
            let take = (chunks_per_thread * chunk_len).min(rest.len());
            let (mine, tail) = rest.split_at_mut(take);
            rest = tail;
            let start = first_chunk;
            first_chunk += chunks_per_thread;
            scope.spawn(move || {
                for (offset, chunk) in mine.chunks_mut(chunk_len).enumerate() {
                    work(start + offset, chunk);
                }
            });
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_chunk_is_visited_once_with_its_index() {
        for threads in 1..5 {
            let mut data = vec![0usize; 103];
            for_each_chunk_mut(&mut data, 10, threads, |index, chunk| {
                for value in chunk.iter_mut() {
                    *value += index + 1;
                }
            });
            for (i, value) in data.iter().enumerate() {
                assert_eq!(*value, i / 10 + 1, "threads {threads}, element {i}");
            }
        }
    }
}
