//! `--shard I/N`: a contiguous range of the packed workload's sequences. The whole data set
//! is packed as without it, then cut into N ranges: shard `i` of `N` over `S` sequences holds
//! sequences `floor(i S / N) .. floor((i + 1) S / N)` (sizes differ by at most one, the same
//! ranges for every model and run). `--shard env` (or `env/N`) takes the index and count from
//! the scheduler: Slurm job arrays, Kubernetes Indexed Jobs, SkyPilot.

use anyhow::{Result, bail};
use std::ops::Range;
use std::str::FromStr;

/// `--shard` as given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardArg {
    /// `I/N`.
    Fixed {
        /// Zero-based index.
        index: usize,
        /// Shards in all.
        count: usize,
    },
    /// `env` or `env/N`: the index (and the count unless given) from the scheduler's variables.
    Env {
        /// `N` of `env/N` (Kubernetes Indexed Jobs give no count).
        count: Option<usize>,
    },
}

impl FromStr for ShardArg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let number = |text: &str, what: &str| {
            text.parse::<usize>()
                .map_err(|_| format!("--shard {s}: {what} {text:?} is not a whole number"))
        };
        let (head, tail) = match s.split_once('/') {
            Some((head, tail)) => (head, Some(tail)),
            None => (s, None),
        };
        if head == "env" {
            let count = tail.map(|t| number(t, "the count")).transpose()?;
            return Ok(ShardArg::Env { count });
        }
        let Some(tail) = tail else {
            return Err(format!(
                "--shard {s}: expected I/N (zero-based index of N shards, e.g. 0/4) or env"
            ));
        };
        Ok(ShardArg::Fixed {
            index: number(head, "the index")?,
            count: number(tail, "the count")?,
        })
    }
}

/// The shard a run computes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shard {
    /// Zero-based index.
    pub index: usize,
    /// Shards in all.
    pub count: usize,
    /// Where the index and count came from (`--shard`, or the variables read).
    pub source: String,
}

impl Shard {
    /// Its range of `total` sequences (see the module's formula); an error when a shard
    /// would be empty.
    pub fn range(&self, total: usize) -> Result<Range<usize>> {
        if self.count > total {
            bail!(
                "--shard {}/{}: {total} sequences cannot fill {} shards (each needs one); use at most {total} shards or more --num-samples",
                self.index,
                self.count,
                self.count
            );
        }
        let at = |i: usize| i * total / self.count;
        Ok(at(self.index)..at(self.index + 1))
    }
}

/// Sequences the run computes: the shard's of `--num-samples`, or all of them (what the
/// memory plan sizes; packing gives exactly `--num-samples` or fails).
pub fn planned_sequences(args: &crate::args::WorkloadArgs) -> Result<usize> {
    match args.shard {
        None => Ok(args.num_samples),
        Some(arg) => {
            let shard = resolve(arg, |name| std::env::var(name).ok())?;
            Ok(shard.range(args.num_samples)?.len())
        }
    }
}

/// Resolves `--shard` with the environment `var` (the process's, in a run).
pub fn resolve(arg: ShardArg, var: impl Fn(&str) -> Option<String>) -> Result<Shard> {
    let shard = match arg {
        ShardArg::Fixed { index, count } => Shard {
            index,
            count,
            source: format!("--shard {index}/{count}"),
        },
        ShardArg::Env { count } => from_env(count, &var)?,
    };
    if shard.count == 0 || shard.index >= shard.count {
        bail!(
            "{}: shard index {} of {} shards; the index is zero-based and below the count",
            shard.source,
            shard.index,
            shard.count
        );
    }
    Ok(shard)
}

fn from_env(given: Option<usize>, var: &impl Fn(&str) -> Option<String>) -> Result<Shard> {
    let number = |name: &str| -> Result<Option<usize>> {
        match var(name) {
            None => Ok(None),
            Some(v) => match v.trim().parse() {
                Ok(n) => Ok(Some(n)),
                Err(_) => bail!("--shard env: {name}={v:?} is not a whole number"),
            },
        }
    };
    let agree = |count: usize, source: String| -> Result<usize> {
        match given {
            Some(n) if n != count => {
                bail!("--shard env/{n}: {source} says {count} shards")
            }
            _ => Ok(count),
        }
    };
    if let Some(id) = number("SLURM_ARRAY_TASK_ID")? {
        if let Some(count) = number("SLURM_ARRAY_TASK_COUNT")? {
            let min = number("SLURM_ARRAY_TASK_MIN")?.unwrap_or(0);
            let source = format!(
                "SLURM_ARRAY_TASK_ID={id}, SLURM_ARRAY_TASK_MIN={min}, SLURM_ARRAY_TASK_COUNT={count}"
            );
            let count = agree(count, source.clone())?;
            return slurm_index(id, min, count, source);
        }
        if let (Some(min), Some(max)) = (
            number("SLURM_ARRAY_TASK_MIN")?,
            number("SLURM_ARRAY_TASK_MAX")?,
        ) {
            let source = format!(
                "SLURM_ARRAY_TASK_ID={id}, SLURM_ARRAY_TASK_MIN={min}, SLURM_ARRAY_TASK_MAX={max}"
            );
            let count = agree(max.saturating_sub(min) + 1, source.clone())?;
            return slurm_index(id, min, count, source);
        }
        bail!(
            "--shard env: SLURM_ARRAY_TASK_ID is set but neither SLURM_ARRAY_TASK_COUNT nor SLURM_ARRAY_TASK_MIN/MAX; submit with --array=0-N"
        );
    }
    if let Some(index) = number("JOB_COMPLETION_INDEX")? {
        let Some(count) = given else {
            bail!(
                "--shard env: JOB_COMPLETION_INDEX={index} (a Kubernetes Indexed Job) gives no count; pass it as --shard env/N (the Job's completions)"
            );
        };
        return Ok(Shard {
            index,
            count,
            source: format!("JOB_COMPLETION_INDEX={index} and --shard env/{count}"),
        });
    }
    if let (Some(rank), Some(nodes)) =
        (number("SKYPILOT_NODE_RANK")?, number("SKYPILOT_NUM_NODES")?)
    {
        let source = format!("SKYPILOT_NODE_RANK={rank}, SKYPILOT_NUM_NODES={nodes}");
        let count = agree(nodes, source.clone())?;
        return Ok(Shard {
            index: rank,
            count,
            source,
        });
    }
    bail!(
        "--shard env: none of SLURM_ARRAY_TASK_ID, JOB_COMPLETION_INDEX or SKYPILOT_NODE_RANK is set; give --shard I/N"
    )
}

/// A Slurm array task's shard: arrays may start above 0 (`--array=1-4`) but must be
/// contiguous (a step or a list leaves gaps the count cannot describe).
fn slurm_index(id: usize, min: usize, count: usize, source: String) -> Result<Shard> {
    if id < min || id - min >= count {
        bail!(
            "--shard env: {source} is not a contiguous array 0..count (use --array=0-{})",
            count.saturating_sub(1)
        );
    }
    Ok(Shard {
        index: id - min,
        count,
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn ranges_are_contiguous_cover_everything_once_and_differ_by_at_most_one() {
        for total in 1..40 {
            for count in 1..=total.min(7) {
                let mut next = 0;
                for index in 0..count {
                    let shard = Shard {
                        index,
                        count,
                        source: String::new(),
                    };
                    let r = shard.range(total).unwrap();
                    assert_eq!(r.start, next);
                    let len = r.len();
                    assert!(
                        len == total / count || len == total / count + 1,
                        "{total} {count}"
                    );
                    next = r.end;
                }
                assert_eq!(next, total);
            }
        }
        // The documented formula: 10 sequences in 3 shards are 0..3, 3..6, 6..10.
        let ranges: Vec<_> = (0..3)
            .map(|index| {
                Shard {
                    index,
                    count: 3,
                    source: String::new(),
                }
                .range(10)
                .unwrap()
            })
            .collect();
        assert_eq!(ranges, vec![0..3, 3..6, 6..10]);
        let too_many = Shard {
            index: 0,
            count: 5,
            source: String::new(),
        };
        assert!(
            too_many
                .range(4)
                .unwrap_err()
                .to_string()
                .contains("cannot fill 5 shards")
        );
    }

    #[test]
    fn the_argument_is_an_index_and_count_or_env() {
        assert_eq!("2/5".parse(), Ok(ShardArg::Fixed { index: 2, count: 5 }));
        assert_eq!("env".parse(), Ok(ShardArg::Env { count: None }));
        assert_eq!("env/8".parse(), Ok(ShardArg::Env { count: Some(8) }));
        assert!("3".parse::<ShardArg>().unwrap_err().contains("I/N"));
        assert!("a/2".parse::<ShardArg>().unwrap_err().contains("index"));
        let err = resolve(ShardArg::Fixed { index: 4, count: 4 }, env(&[])).unwrap_err();
        assert!(err.to_string().contains("zero-based"), "{err}");
    }

    #[test]
    fn each_scheduler_s_variables_give_the_shard_and_say_which_were_read() {
        let slurm = env(&[
            ("SLURM_ARRAY_TASK_ID", "3"),
            ("SLURM_ARRAY_TASK_COUNT", "4"),
        ]);
        let shard = resolve(ShardArg::Env { count: None }, slurm).unwrap();
        assert_eq!((shard.index, shard.count), (3, 4));
        assert!(shard.source.contains("SLURM_ARRAY_TASK_ID=3"));
        let min_max = env(&[
            ("SLURM_ARRAY_TASK_ID", "5"),
            ("SLURM_ARRAY_TASK_MIN", "4"),
            ("SLURM_ARRAY_TASK_MAX", "7"),
        ]);
        let shard = resolve(ShardArg::Env { count: None }, min_max).unwrap();
        assert_eq!((shard.index, shard.count), (1, 4));
        let k8s = env(&[("JOB_COMPLETION_INDEX", "2")]);
        let shard = resolve(ShardArg::Env { count: Some(3) }, k8s).unwrap();
        assert_eq!((shard.index, shard.count), (2, 3));
        assert!(shard.source.contains("JOB_COMPLETION_INDEX=2"));
        let err = resolve(
            ShardArg::Env { count: None },
            env(&[("JOB_COMPLETION_INDEX", "2")]),
        );
        assert!(err.unwrap_err().to_string().contains("--shard env/N"));
        let sky = env(&[("SKYPILOT_NODE_RANK", "1"), ("SKYPILOT_NUM_NODES", "2")]);
        let shard = resolve(ShardArg::Env { count: None }, sky).unwrap();
        assert_eq!((shard.index, shard.count), (1, 2));
        let disagree = env(&[("SKYPILOT_NODE_RANK", "1"), ("SKYPILOT_NUM_NODES", "2")]);
        let err = resolve(ShardArg::Env { count: Some(3) }, disagree).unwrap_err();
        assert!(err.to_string().contains("says 2 shards"), "{err}");
        let err = resolve(ShardArg::Env { count: None }, env(&[])).unwrap_err();
        assert!(
            err.to_string().contains("none of SLURM_ARRAY_TASK_ID"),
            "{err}"
        );
        let bad = env(&[
            ("SLURM_ARRAY_TASK_ID", "x"),
            ("SLURM_ARRAY_TASK_COUNT", "4"),
        ]);
        assert!(resolve(ShardArg::Env { count: None }, bad).is_err());
    }
}
