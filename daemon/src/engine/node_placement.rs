//! Which provider runs which nodes of a session, as ONNX Runtime decides when it partitions the
//! graph: read from the session's own log (at verbose level, for sessions built on an
//! accelerator only), where `VerifyEachNodeIsAssignedToAnEp` lists the node count per provider
//! and, when the graph is split, the nodes of each. A compiling provider (OpenVINO,
//! TensorRT-RTX, CoreML) shows each of its partitions as one fused node; nodes left on the CPU
//! show with their operator, which says what the accelerator could not take.
//!
//! The session's warnings (Memcpy nodes added, nodes not on the preferred provider) are passed
//! on to the log, as ONNX Runtime's default logger would print them, and the placement lines
//! at info level under the `onnxruntime` target.

use std::sync::{Arc, Mutex};

use ort::logging::{LogLevel, LoggerFunction};

/// Node counts per provider of one session, in the order ONNX Runtime lists them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodePlacement {
    pub providers: Vec<ProviderNodes>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProviderNodes {
    /// ONNX Runtime's name, e.g. `OpenVINOExecutionProvider`.
    pub provider: String,
    pub nodes: usize,
    /// The operators of its nodes, each once, when ONNX Runtime lists them (a split graph).
    pub ops: Vec<String>,
}

impl NodePlacement {
    /// Reads `VerifyEachNodeIsAssignedToAnEp`'s messages, in order.
    pub fn parse<'a>(lines: impl IntoIterator<Item = &'a str>) -> NodePlacement {
        let mut out = NodePlacement::default();
        for line in lines {
            let text = line.trim();
            if let Some((provider, nodes)) = header(text) {
                out.providers.push(ProviderNodes {
                    provider,
                    nodes,
                    ops: Vec::new(),
                });
            } else if let Some(last) = out.providers.last_mut()
                && let Some(op) = text.split_whitespace().next()
                && !text.starts_with("Node placements")
                && !last.ops.iter().any(|o| o == op)
            {
                last.ops.push(op.to_owned());
            }
        }
        out
    }

    /// The nodes on `provider` (ONNX Runtime's name).
    pub fn nodes_on(&self, provider: &str) -> usize {
        self.providers
            .iter()
            .filter(|p| p.provider == provider)
            .map(|p| p.nodes)
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.providers.is_empty()
    }
}

/// `(provider, count)` of "All nodes placed on [P]. Number of nodes: N" or
/// "Node(s) placed on [P]. Number of nodes: N".
fn header(text: &str) -> Option<(String, usize)> {
    let rest = text.split("placed on [").nth(1)?;
    let (provider, rest) = rest.split_once(']')?;
    let count = rest.rsplit(':').next()?.trim().parse().ok()?;
    Some((provider.to_owned(), count))
}

/// `OpenVINOExecutionProvider` → `OpenVINO`.
fn short(provider: &str) -> &str {
    provider
        .strip_suffix("ExecutionProvider")
        .filter(|s| !s.is_empty())
        .unwrap_or(provider)
}

impl std::fmt::Display for NodePlacement {
    /// e.g. `OpenVINO 2 nodes, CPU 3 nodes (Shape, Gather)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, p) in self.providers.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(
                f,
                "{} {} node{}",
                short(&p.provider),
                p.nodes,
                if p.nodes == 1 { "" } else { "s" }
            )?;
            if i > 0 && !p.ops.is_empty() {
                const SHOWN: usize = 6;
                let mut ops = p.ops[..p.ops.len().min(SHOWN)].join(", ");
                if p.ops.len() > SHOWN {
                    ops.push_str(", …");
                }
                write!(f, " ({ops})")?;
            }
        }
        Ok(())
    }
}

/// A session logger that keeps the placement messages in `lines` and passes warnings on.
pub fn capture(model: &str) -> (LoggerFunction, Arc<Mutex<Vec<String>>>) {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let kept = lines.clone();
    let model = model.to_owned();
    let logger: LoggerFunction = Arc::new(move |level, _category, _id, location, message| {
        if location.contains("VerifyEachNodeIsAssignedToAnEp") {
            // In the log too (`TESSERA_LOG=onnxruntime=info`; scripts/gpu-check counts them).
            tracing::info!(target: "onnxruntime", model = %model, "{message}");
            kept.lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(message.to_owned());
        }
        match level {
            LogLevel::Warning => tracing::warn!(target: "onnxruntime", model = %model, "{message}"),
            LogLevel::Error | LogLevel::Fatal => {
                tracing::error!(target: "onnxruntime", model = %model, "{message}")
            }
            LogLevel::Verbose | LogLevel::Info => {}
        }
    });
    (logger, lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_split_graph_lists_each_provider_and_the_operators_left_on_the_cpu() {
        let placement = NodePlacement::parse([
            "Node placements",
            " Node(s) placed on [OpenVINOExecutionProvider]. Number of nodes: 2",
            "  OpenVINO-EP-subgraph_1 (OpenVINOExecutionProvider_OpenVINO-EP-subgraph_1_0)",
            "  OpenVINO-EP-subgraph_2 (OpenVINOExecutionProvider_OpenVINO-EP-subgraph_2_1)",
            " Node(s) placed on [CPUExecutionProvider]. Number of nodes: 3",
            "  Shape (/Shape)",
            "  Gather (/Gather)",
            "  Shape (/Shape_1)",
        ]);
        assert_eq!(placement.nodes_on("OpenVINOExecutionProvider"), 2);
        assert_eq!(placement.nodes_on("CPUExecutionProvider"), 3);
        assert_eq!(
            placement.to_string(),
            "OpenVINO 2 nodes, CPU 3 nodes (Shape, Gather)"
        );
        let whole = NodePlacement::parse([
            " All nodes placed on [CUDAExecutionProvider]. Number of nodes: 41",
        ]);
        assert_eq!(whole.to_string(), "CUDA 41 nodes");
        assert!(NodePlacement::parse(["something else"]).is_empty());
    }
}
