//! The run context: what the host tells the supervisor about the run it is
//! part of (`/.hoist/context.json`). The host builds a [`RunContext`] and
//! serialises it; the supervisor copies its facts into result.json and
//! takes its timeouts and ports from it.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::platform::Platform;
use crate::result::Images;

/// The default path of the context file inside the sandbox.
pub const CONTEXT_PATH: &str = "/.hoist/context.json";

/// A context file larger than this is refused (it holds a few references).
const MAX_CONTEXT_BYTES: u64 = 1 << 20;

/// Every field has a default, so a host may leave out what does not apply
/// and a supervisor started by hand (no file) still runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RunContext {
    pub images: Images,
    /// `os/arch[/variant]` of the images run.
    pub platform: String,
    pub mode: Mode,
    pub isolation: Isolation,
    pub hoist_version: String,
    pub network: Network,
    /// Whether `/recordings` is mounted for the gateway (`--recordings`).
    pub recordings: bool,
    /// Time the host spent materialising the rootfs.
    pub materialize_ms: u64,
    /// Overrides task.json's `agent_timeout_sec` when set.
    pub agent_timeout_sec: Option<u64>,
    /// Overrides task.json's `grade.timeout_sec` when set.
    pub grade_timeout_sec: Option<u64>,
    /// Seconds between SIGTERM and SIGKILL when a process group is stopped.
    pub kill_grace_sec: u64,
    /// The loopback port the gateway listens on ([`gateway_port`]).
    pub gateway_port: u16,
    /// `--isolation strict`: refuse to run a phase with any confinement
    /// the kernel cannot give (`crate::confine::Support::gaps`).
    #[serde(default)]
    pub strict: bool,
    /// Use at most this Landlock ABI (`HOIST_LANDLOCK_ABI`).
    #[serde(default)]
    pub landlock_abi_max: Option<u32>,
    /// Which part of the pipeline (docs/pipeline.md) this sandbox runs.
    #[serde(default)]
    pub session: Session,
    /// The gateway runs in a session of its own (container mode) on this
    /// network: the agent session starts none, and waits for its
    /// `/health` at step 3.
    #[serde(default)]
    pub gateway_elsewhere: bool,
}

/// A run is two sandbox sessions on two trees (docs/pipeline.md, "Grade"): the
/// agent's, then grading in a fresh rootfs that holds only the agent's
/// changes to the workdir.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Session {
    /// Steps 1–6 and 8 and grading in the same tree. Only the supervisor's
    /// own tests use it, on a scratch root (`--root`); `hoist run` never
    /// does.
    #[default]
    Whole,
    /// Steps 1–6: install.sh, gateway, agent; then the workdir's changes
    /// as `/output/task/changes.tar` and the agent's outcome as
    /// `/output/task/agent.json` ([`AgentPhase`]). A run that fails here
    /// writes its result.json instead, and no grading session follows.
    Agent,
    /// Step 1, the changes at [`CHANGES_PATH`] applied beneath the
    /// workdir, step 7 and step 8, in a fresh rootfs.
    Grade(AgentPhase),
    /// Container mode: only the gateway (step 3), in a container of its
    /// own that nothing of the agent's side ever ran in; the agent
    /// session's container shares its network and waits for `/health`
    /// ([`RunContext::gateway_elsewhere`]). It serves until it is killed.
    Gateway,
}

/// Where the grading session finds the agent's changes to the workdir
/// (bound read-only, or copied in).
pub const CHANGES_PATH: &str = "/.hoist/changes.tar";

/// What the agent session hands to the grading session through the host:
/// `/output/task/agent.json`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentPhase {
    pub schema: String,
    pub task_id: String,
    pub agent: crate::result::AgentOutcome,
    pub agent_ms: u64,
    /// When the agent session started (result.json `started_at`).
    pub started_at: String,
    /// What `changes.tar` holds.
    pub changes: super::changes::Written,
}

/// The value of [`AgentPhase`]'s `schema`.
pub const AGENT_PHASE_SCHEMA: &str = "hoist.agent-phase/v1";

/// agent.json is a few hundred bytes (plus the skipped paths, bounded by
/// the workdir); anything larger is not one.
pub const MAX_AGENT_PHASE_BYTES: u64 = 4 << 20;

impl AgentPhase {
    /// Parse an agent.json read back from a sandbox: written by hoist's
    /// supervisor, but read as untrusted bytes all the same.
    pub fn from_json(bytes: &[u8]) -> Result<AgentPhase, String> {
        let p: AgentPhase = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if p.schema != AGENT_PHASE_SCHEMA {
            return Err(format!(
                "schema {:?}, expected {AGENT_PHASE_SCHEMA:?}",
                p.schema
            ));
        }
        Ok(p)
    }
}

/// The gateway's port where the run's loopback is its own.
pub const DEFAULT_GATEWAY_PORT: u16 = 8377;

/// The gateway's port: [`DEFAULT_GATEWAY_PORT`] in a network namespace of
/// the run's own. Where the network is `shared` (chroot isolation,
/// `--network host`), a loopback port free now, picked by the kernel, so
/// that runs side by side in one runner each reach their own gateway
/// rather than the first one to bind a fixed port. The host and the
/// sandbox share that network, so free here is free there. Another
/// process could still take it before the gateway binds; the gateway then
/// exits and the run fails with a gateway infra error naming the port.
pub fn gateway_port(shared: bool) -> u16 {
    if !shared {
        return DEFAULT_GATEWAY_PORT;
    }
    std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(DEFAULT_GATEWAY_PORT)
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Crane,
    Container,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    #[default]
    Namespaces,
    Chroot,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    #[default]
    None,
    Host,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Crane => "crane",
            Mode::Container => "container",
        }
    }
}

impl Isolation {
    pub fn as_str(self) -> &'static str {
        match self {
            Isolation::Namespaces => "namespaces",
            Isolation::Chroot => "chroot",
        }
    }
}

impl Default for RunContext {
    fn default() -> RunContext {
        RunContext {
            images: Images::default(),
            platform: Platform::host().to_string(),
            mode: Mode::default(),
            isolation: Isolation::default(),
            hoist_version: env!("CARGO_PKG_VERSION").to_string(),
            network: Network::default(),
            recordings: false,
            materialize_ms: 0,
            agent_timeout_sec: None,
            grade_timeout_sec: None,
            kill_grace_sec: 10,
            gateway_port: DEFAULT_GATEWAY_PORT,
            strict: false,
            landlock_abi_max: None,
            session: Session::default(),
            gateway_elsewhere: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    #[error("cannot read the run context {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the run context {path} is larger than {MAX_CONTEXT_BYTES} bytes")]
    TooLarge { path: PathBuf },
    #[error("the run context {path} is not valid JSON for this hoist version")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("the run context sets {field} to 0; a timeout must be at least 1 s")]
    ZeroTimeout { field: &'static str },
}

/// Parse and check a context file's bytes.
pub fn parse_context(path: &Path, bytes: &[u8]) -> Result<RunContext, ContextError> {
    let ctx: RunContext = serde_json::from_slice(bytes).map_err(|source| ContextError::Json {
        path: path.to_path_buf(),
        source,
    })?;
    if ctx.agent_timeout_sec == Some(0) {
        return Err(ContextError::ZeroTimeout {
            field: "agent_timeout_sec",
        });
    }
    if ctx.grade_timeout_sec == Some(0) {
        return Err(ContextError::ZeroTimeout {
            field: "grade_timeout_sec",
        });
    }
    Ok(ctx)
}

/// Read the context at `path`; a missing file gives the defaults.
pub fn load_context(path: &Path) -> Result<RunContext, ContextError> {
    let read_err = |source| ContextError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(RunContext::default()),
        Err(e) => return Err(read_err(e)),
    };
    let mut bytes = Vec::new();
    file.take(MAX_CONTEXT_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    if bytes.len() as u64 > MAX_CONTEXT_BYTES {
        return Err(ContextError::TooLarge {
            path: path.to_path_buf(),
        });
    }
    parse_context(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gateway_port_is_fixed_only_on_a_loopback_of_the_runs_own() {
        assert_eq!(gateway_port(false), DEFAULT_GATEWAY_PORT);
        let shared = gateway_port(true);
        assert!(
            std::net::TcpListener::bind(("127.0.0.1", shared)).is_ok(),
            "{shared}"
        );
    }

    fn parse(text: &str) -> Result<RunContext, ContextError> {
        parse_context(Path::new("/.hoist/context.json"), text.as_bytes())
    }

    #[test]
    fn full_context_parses() {
        let ctx = parse(
            r#"{"images": {"benchmark": {"ref": "oci:/b", "digest": "sha256:aa"},
                           "agent": {"ref": "oci:/a", "digest": "sha256:bb"},
                           "gateway": null},
                "platform": "linux/arm64/v8", "mode": "container", "isolation": "chroot",
                "hoist_version": "9.9.9", "network": "host", "recordings": true,
                "materialize_ms": 42, "agent_timeout_sec": 5, "grade_timeout_sec": null,
                "kill_grace_sec": 2, "gateway_port": 9000}"#,
        )
        .unwrap();
        assert_eq!(ctx.images.benchmark.digest, "sha256:aa");
        assert_eq!(ctx.images.gateway, None);
        assert_eq!(ctx.platform, "linux/arm64/v8");
        assert_eq!(ctx.mode, Mode::Container);
        assert_eq!(ctx.isolation, Isolation::Chroot);
        assert_eq!(ctx.network, Network::Host);
        assert!(ctx.recordings);
        assert_eq!(ctx.materialize_ms, 42);
        assert_eq!(ctx.agent_timeout_sec, Some(5));
        assert_eq!(ctx.grade_timeout_sec, None);
        assert_eq!(ctx.kill_grace_sec, 2);
        assert_eq!(ctx.gateway_port, 9000);
    }

    #[test]
    fn empty_object_gives_defaults() {
        let ctx = parse("{}").unwrap();
        assert_eq!(ctx, RunContext::default());
        assert_eq!(ctx.kill_grace_sec, 10);
        assert_eq!(ctx.gateway_port, 8377);
        assert_eq!(ctx.hoist_version, env!("CARGO_PKG_VERSION"));
    }

    #[test]
    fn round_trips_through_json() {
        let mut ctx = RunContext {
            agent_timeout_sec: Some(3),
            ..RunContext::default()
        };
        ctx.images.gateway = Some(Default::default());
        let text = serde_json::to_string(&ctx).unwrap();
        assert_eq!(parse(&text).unwrap(), ctx);
    }

    #[test]
    fn unknown_mode_is_refused() {
        assert!(matches!(
            parse(r#"{"mode": "podman"}"#),
            Err(ContextError::Json { .. })
        ));
    }

    #[test]
    fn port_out_of_range_is_refused() {
        assert!(matches!(
            parse(r#"{"gateway_port": 70000}"#),
            Err(ContextError::Json { .. })
        ));
    }

    #[test]
    fn zero_agent_timeout_is_refused() {
        assert!(matches!(
            parse(r#"{"agent_timeout_sec": 0}"#),
            Err(ContextError::ZeroTimeout { .. })
        ));
    }

    #[test]
    fn missing_file_gives_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = load_context(&dir.path().join("context.json")).unwrap();
        assert_eq!(ctx, RunContext::default());
    }
}
