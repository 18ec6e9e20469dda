//! The axis images a command needs, pulled as `--pull` and `--platform`
//! say (run, eval, lock, bake, materialize; the commands that only read an
//! image take the defaults).

use std::sync::Arc;

use anyhow::Context as _;
use clap::Args;
use hoist::build::{self, DockerfileRef};
use hoist::exit::UsageError;
use hoist::platform::Platform;
use hoist::pull::{pull, NoProgress, Progress, PullOptions, PullPolicy, Pulled};
use hoist::reference::Reference;
use hoist::registry::Client;
use hoist::store::Store;

use super::Global;

/// `--pull` and `--platform`.
#[derive(Args, Clone, Default)]
pub struct PullFlags {
    /// When to ask the registry: `missing` uses a tag the store already
    /// holds (for this platform) as stored, and pulls the rest; `always`
    /// resolves every tag at the registry; `never` uses only the store.
    /// A reference by digest the store holds never needs the registry.
    #[arg(
        long = "pull",
        value_enum,
        value_name = "POLICY",
        default_value = "missing"
    )]
    pub policy: PullPolicy,
    /// The image platform wanted, os/arch[/variant]: chosen from a
    /// multi-platform index; a single-platform image of another platform
    /// is an error [default: this host's].
    #[arg(long, value_name = "OS/ARCH")]
    pub platform: Option<Platform>,
}

impl PullFlags {
    pub fn options(&self) -> PullOptions {
        PullOptions {
            platform: self.platform.clone(),
            policy: self.policy,
            ..PullOptions::default()
        }
    }

    /// For a command that runs the image here: `--platform` must be this
    /// host's (hoist never emulates another), checked before anything is
    /// pulled.
    pub fn check_runnable(&self) -> Result<(), UsageError> {
        let host = Platform::host();
        match &self.platform {
            Some(p) if !host.matches(p) => Err(UsageError::new(
                "--platform",
                format!("{p}: this host is {host}, and hoist never emulates another platform (lock, bake, materialize and pull take --platform to prepare images for another machine)"),
            )),
            _ => Ok(()),
        }
    }

    /// The flags as given, for a command line hoist writes (an emitted
    /// job's).
    pub fn forwarded(&self) -> Vec<String> {
        let mut v = vec!["--pull".to_string(), self.policy.as_str().to_string()];
        if let Some(p) = &self.platform {
            v.extend(["--platform".to_string(), p.to_string()]);
        }
        v
    }
}

/// Pull (or find complete in the store) every image of `refs`, all at
/// once: resolving tags costs a registry round trip each. A tag taken
/// from the store is said on stderr.
pub fn pull_axes(
    global: &Global,
    store: &Store,
    refs: &[&str],
    flags: &PullFlags,
) -> anyhow::Result<Vec<Pulled>> {
    let pulled = pull_quietly(global, store, refs, flags)?;
    for line in stored_notes(global, &pulled) {
        hoist::errln!("{line}");
    }
    Ok(pulled)
}

/// [`pull_axes`] without the notes; [`stored_notes`] gives them.
pub fn pull_quietly(
    global: &Global,
    store: &Store,
    refs: &[&str],
    flags: &PullFlags,
) -> anyhow::Result<Vec<Pulled>> {
    pull_showing(global, store, refs, flags, Arc::new(NoProgress))
}

/// [`pull_quietly`], each blob's download told to `progress`.
pub fn pull_showing(
    global: &Global,
    store: &Store,
    refs: &[&str],
    flags: &PullFlags,
    progress: Arc<dyn Progress>,
) -> anyhow::Result<Vec<Pulled>> {
    let client = Client::new(global.registry_options()?)?;
    let wanted = refs
        .iter()
        .map(|r| Wanted::parse(r))
        .collect::<Result<Vec<_>, _>>()?;
    let opts = flags.options();
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let pulls = wanted.iter().map(|w| {
        let (client, opts, progress) = (&client, &opts, progress.clone());
        async move { w.obtain(store, client, opts, progress).await }
    });
    rt.block_on(futures_util::future::try_join_all(pulls))
}

/// An axis reference: an image to pull, or one to build from a
/// Dockerfile (`dockerfile:PATH`).
pub enum Wanted {
    Image(Reference),
    Built(DockerfileRef),
}

impl Wanted {
    pub fn parse(s: &str) -> anyhow::Result<Wanted> {
        Ok(match DockerfileRef::parse(s) {
            Some(r) => Wanted::Built(r?),
            None => Wanted::Image(s.parse()?),
        })
    }

    /// Pull it, or build it (or find it built) into the store.
    pub async fn obtain(
        &self,
        store: &Store,
        client: &Client,
        opts: &PullOptions,
        progress: Arc<dyn Progress>,
    ) -> anyhow::Result<Pulled> {
        match self {
            Wanted::Image(r) => pull(store, client, r, opts, progress)
                .await
                .with_context(|| format!("pulling {r}")),
            Wanted::Built(r) => build::obtain(store, client, r, opts, progress)
                .await
                .with_context(|| format!("building {r}")),
        }
    }
}

impl std::fmt::Display for Wanted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Wanted::Image(r) => r.fmt(f),
            Wanted::Built(r) => r.fmt(f),
        }
    }
}

/// One line for each image whose tag was taken from the store, the
/// registry not asked (none under `--quiet`).
pub fn stored_notes(global: &Global, pulled: &[Pulled]) -> Vec<String> {
    if global.quiet {
        return Vec::new();
    }
    let mut notes: Vec<String> = pulled
        .iter()
        .filter(|p| p.from_store)
        .map(|p| stored_note(&p.reference, &p.digest.to_string()))
        .collect();
    let mut seen = std::collections::HashSet::new();
    notes.retain(|n| seen.insert(n.clone()));
    notes
}

pub fn stored_note(reference: &str, digest: &str) -> String {
    format!("note: {reference}: using the stored copy ({digest}); --pull always asks the registry")
}
