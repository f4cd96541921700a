//! The openb trace (Alibaba cluster-trace-gpu-v2023, the FGD paper's data set): node and pod CSVs.
//! See `../shared/data/openb/README.md` for the columns.

use std::path::{Path, PathBuf};

use thiserror::Error;

/// Default node list, relative to the repository root.
pub const DEFAULT_NODES: &str = "../shared/data/openb/openb_node_list_gpu_node.csv";
/// Default pod list, relative to the repository root.
pub const DEFAULT_PODS: &str = "../shared/data/openb/openb_pod_list_default.csv";
/// Most GPUs one openb node may have in the replay.
pub const MAX_NODE_GPUS: usize = 8;

/// Why a trace file cannot be used.
#[derive(Debug, Error)]
pub enum TraceError {
    #[error(
        "trace file {path} not found; the openb trace is expected under ../shared/data/openb \
         (check ../shared/data, or pass --nodes/--pods)"
    )]
    Missing { path: PathBuf },
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: header lacks column {column:?}")]
    MissingColumn { path: PathBuf, column: &'static str },
    #[error("{path}:{line}: {message}")]
    BadRow {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{path}: no rows")]
    Empty { path: PathBuf },
}

/// One node of the trace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceNode {
    pub name: String,
    /// CPU capacity, milli-cores.
    pub cpu_milli: u32,
    /// Host memory, MiB.
    pub memory_mib: u64,
    /// GPUs (0..=8).
    pub gpus: u8,
    /// GPU model name ("T4", "G2", ...; empty for CPU-only nodes).
    pub model: String,
}

/// One task (pod) of the trace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceTask {
    pub name: String,
    /// CPU request, milli-cores.
    pub cpu_milli: u32,
    /// Memory request, MiB.
    pub memory_mib: u64,
    /// Whole GPUs (0..=8); 1 with `gpu_milli` < 1000 is a share.
    pub num_gpu: u8,
    /// Compute per GPU, milli-GPU, clipped to 1..=1000 (0 when `num_gpu` is 0).
    pub gpu_milli: u16,
    /// Allowed GPU models; empty = any.
    pub models: Vec<String>,
}

impl TraceTask {
    /// Total GPU demand, milli-GPU.
    pub fn gpu_demand(&self) -> u64 {
        u64::from(self.num_gpu) * u64::from(self.gpu_milli)
    }
}

fn read(path: &Path) -> Result<String, TraceError> {
    std::fs::read_to_string(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            TraceError::Missing {
                path: path.to_path_buf(),
            }
        } else {
            TraceError::Io {
                path: path.to_path_buf(),
                source: e,
            }
        }
    })
}

/// A header and its rows, with 1-based line numbers.
struct Table<'a> {
    path: &'a Path,
    cols: Vec<&'a str>,
    rows: Vec<(usize, Vec<&'a str>)>,
}

impl<'a> Table<'a> {
    fn parse(text: &'a str, path: &'a Path) -> Result<Table<'a>, TraceError> {
        let mut lines = text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty());
        let (_, header) = lines.next().ok_or_else(|| TraceError::Empty {
            path: path.to_path_buf(),
        })?;
        let cols = header
            .trim_start_matches('\u{feff}')
            .split(',')
            .map(str::trim)
            .collect();
        let rows: Vec<_> = lines
            .map(|(i, l)| (i + 1, l.split(',').map(str::trim).collect()))
            .collect();
        if rows.is_empty() {
            return Err(TraceError::Empty {
                path: path.to_path_buf(),
            });
        }
        Ok(Table { path, cols, rows })
    }

    fn col(&self, name: &'static str) -> Result<usize, TraceError> {
        self.cols
            .iter()
            .position(|c| *c == name)
            .ok_or_else(|| TraceError::MissingColumn {
                path: self.path.to_path_buf(),
                column: name,
            })
    }

    fn bad(&self, line: usize, message: String) -> TraceError {
        TraceError::BadRow {
            path: self.path.to_path_buf(),
            line,
            message,
        }
    }

    fn field<'r>(
        &self,
        line: usize,
        row: &'r [&'a str],
        i: usize,
        name: &str,
    ) -> Result<&'r str, TraceError> {
        row.get(i)
            .copied()
            .ok_or_else(|| self.bad(line, format!("missing field {name}")))
    }

    fn num<T: std::str::FromStr>(
        &self,
        line: usize,
        row: &[&'a str],
        i: usize,
        name: &str,
    ) -> Result<T, TraceError> {
        let s = self.field(line, row, i, name)?;
        // Some exports write integers as "12000.0".
        let s = s.strip_suffix(".0").unwrap_or(s);
        s.parse()
            .map_err(|_| self.bad(line, format!("{name} is not a non-negative integer: {s:?}")))
    }
}

/// Parses a node list (`sn,cpu_milli,memory_mib,gpu,model`); `path` is only for messages.
pub fn parse_nodes(text: &str, path: &Path) -> Result<Vec<TraceNode>, TraceError> {
    let t = Table::parse(text, path)?;
    let (sn, cpu, mem, gpu, model) = (
        t.col("sn")?,
        t.col("cpu_milli")?,
        t.col("memory_mib")?,
        t.col("gpu")?,
        t.col("model")?,
    );
    let mut out = Vec::with_capacity(t.rows.len());
    for (line, row) in &t.rows {
        let gpus: u8 = t.num(*line, row, gpu, "gpu")?;
        if usize::from(gpus) > MAX_NODE_GPUS {
            return Err(t.bad(
                *line,
                format!("{gpus} GPUs; the replay supports at most {MAX_NODE_GPUS} per node"),
            ));
        }
        let model = row.get(model).copied().unwrap_or("");
        out.push(TraceNode {
            name: t.field(*line, row, sn, "sn")?.to_string(),
            cpu_milli: t.num(*line, row, cpu, "cpu_milli")?,
            memory_mib: t.num(*line, row, mem, "memory_mib")?,
            gpus,
            model: if model == "nan" { "" } else { model }.to_string(),
        });
    }
    Ok(out)
}

/// Parses a pod list (`name,cpu_milli,memory_mib,num_gpu,gpu_milli[,gpu_spec,...]`).
pub fn parse_tasks(text: &str, path: &Path) -> Result<Vec<TraceTask>, TraceError> {
    let t = Table::parse(text, path)?;
    let (name, cpu, mem, ngpu, milli) = (
        t.col("name")?,
        t.col("cpu_milli")?,
        t.col("memory_mib")?,
        t.col("num_gpu")?,
        t.col("gpu_milli")?,
    );
    let spec = t.col("gpu_spec").ok();
    let mut out = Vec::with_capacity(t.rows.len());
    for (line, row) in &t.rows {
        let num_gpu: u8 = t.num(*line, row, ngpu, "num_gpu")?;
        if usize::from(num_gpu) > MAX_NODE_GPUS {
            return Err(t.bad(*line, format!("num_gpu {num_gpu} is over {MAX_NODE_GPUS}")));
        }
        let raw_milli: u32 = t.num(*line, row, milli, "gpu_milli")?;
        let gpu_milli = if num_gpu == 0 {
            0
        } else {
            raw_milli.clamp(1, 1000) as u16
        };
        let models = match spec.and_then(|i| row.get(i)) {
            None => Vec::new(),
            Some(s) if s.is_empty() || *s == "nan" => Vec::new(),
            Some(s) => s.split('|').map(|m| m.trim().to_string()).collect(),
        };
        out.push(TraceTask {
            name: t.field(*line, row, name, "name")?.to_string(),
            cpu_milli: t.num(*line, row, cpu, "cpu_milli")?,
            memory_mib: t.num(*line, row, mem, "memory_mib")?,
            num_gpu,
            gpu_milli,
            models,
        });
    }
    Ok(out)
}

/// Reads and parses a node list file.
pub fn load_nodes(path: &Path) -> Result<Vec<TraceNode>, TraceError> {
    parse_nodes(&read(path)?, path)
}

/// Reads and parses a pod list file.
pub fn load_tasks(path: &Path) -> Result<Vec<TraceTask>, TraceError> {
    parse_tasks(&read(path)?, path)
}

/// The openb data folder as seen from the repository root or from a crate folder (tests run in
/// the crate folder); `None` when absent.
pub fn data_dir() -> Option<PathBuf> {
    ["../shared/data/openb", "../../shared/data/openb"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.join("openb_node_list_gpu_node.csv").is_file())
}

/// A cluster of `n` nodes made from `nodes`: a seeded sample of them when `n` is smaller; all of
/// them and copies of nodes drawn with replacement when larger (copy `k` of node `x` is named
/// `x~k`), so the mix of models, GPU counts and CPU stays the trace's.
pub fn scale_nodes(nodes: &[TraceNode], n: usize, seed: u64) -> Vec<TraceNode> {
    use rand::seq::SliceRandom;
    use rand::{Rng, SeedableRng};
    let mut sorted: Vec<&TraceNode> = nodes.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    if n <= sorted.len() {
        sorted.shuffle(&mut rng);
        return sorted.into_iter().take(n).cloned().collect();
    }
    let mut out: Vec<TraceNode> = sorted.iter().map(|t| (*t).clone()).collect();
    let mut copies = std::collections::HashMap::new();
    while out.len() < n {
        let t = sorted[rng.random_range(0..sorted.len())];
        let k = copies.entry(t.name.as_str()).or_insert(0u32);
        *k += 1;
        out.push(TraceNode {
            name: format!("{}~{k}", t.name),
            ..t.clone()
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rows_and_specs() {
        let p = Path::new("t.csv");
        let ts = parse_tasks(
            "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec\n\
             a,1000,2048,1,460,T4|P100\nb,2000,0,0,0,nan\nc,1,1,1,1500,\n",
            p,
        )
        .unwrap();
        assert_eq!(ts[0].models, vec!["T4", "P100"]);
        assert_eq!(ts[0].gpu_milli, 460);
        assert_eq!(ts[1].gpu_milli, 0);
        assert!(ts[1].models.is_empty());
        assert_eq!(ts[2].gpu_milli, 1000);
        let ns = parse_nodes(
            "sn,cpu_milli,memory_mib,gpu,model\nn0,64000,1024,2,P100\n",
            p,
        )
        .unwrap();
        assert_eq!(ns[0].gpus, 2);
    }

    #[test]
    fn bad_rows_name_the_line() {
        let p = Path::new("pods.csv");
        let e = parse_tasks(
            "name,cpu_milli,memory_mib,num_gpu,gpu_milli\na,1,1,1,100\nb,x,1,1,100\n",
            p,
        )
        .unwrap_err();
        assert!(matches!(e, TraceError::BadRow { line: 3, .. }), "{e}");
        assert!(e.to_string().contains("pods.csv:3"), "{e}");
        let e = parse_tasks("name,cpu_milli\na,1\n", p).unwrap_err();
        assert!(matches!(e, TraceError::MissingColumn { .. }), "{e}");
        let e = parse_nodes("sn,cpu_milli,memory_mib,gpu,model\nn,1,1,9,X\n", p).unwrap_err();
        assert!(e.to_string().contains("at most 8"), "{e}");
    }

    #[test]
    fn missing_file_points_at_shared_data() {
        let e = load_nodes(Path::new("/nonexistent/nodes.csv")).unwrap_err();
        let m = e.to_string();
        assert!(
            m.contains("/nonexistent/nodes.csv") && m.contains("../shared/data"),
            "{m}"
        );
    }

    fn trace_node(name: &str, gpus: u8) -> TraceNode {
        TraceNode {
            name: name.into(),
            cpu_milli: 96_000,
            memory_mib: 1 << 19,
            gpus,
            model: "V100M32".into(),
        }
    }

    #[test]
    fn a_cluster_scales_to_any_node_count_from_the_trace_nodes() {
        let nodes: Vec<TraceNode> = (0..10)
            .map(|i| trace_node(&format!("n{i}"), i % 9))
            .collect();
        let big = scale_nodes(&nodes, 25, 1);
        assert_eq!(big.len(), 25);
        // Every original node once, then copies with their own names and the original's resources.
        let names: std::collections::HashSet<&str> = big.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names.len(), 25);
        assert!(nodes.iter().all(|n| names.contains(n.name.as_str())));
        for c in &big[10..] {
            let (orig, _) = c.name.split_once('~').unwrap();
            let o = nodes.iter().find(|n| n.name == orig).unwrap();
            assert_eq!(
                (c.gpus, c.cpu_milli, &c.model),
                (o.gpus, o.cpu_milli, &o.model)
            );
        }
        assert_eq!(scale_nodes(&nodes, 25, 1), big, "seeded");
        let small = scale_nodes(&nodes, 4, 1);
        assert_eq!(small.len(), 4);
        assert!(small.iter().all(|n| nodes.contains(n)));
    }
}
