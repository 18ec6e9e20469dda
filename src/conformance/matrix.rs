//! The conformance matrix (`conformance/matrix.toml`): a list of
//! (benchmark, agent, gateway, task) cases. Parsing, `${VAR}` expansion,
//! validation and case selection are pure: the environment comes in as a
//! lookup function, so every rule has a unit test.

use std::collections::BTreeSet;

use serde::Deserialize;

use crate::reference::{Reference, ReferenceError};

/// The variable that names the `[defaults] layout` in references.
pub const LAYOUT_VAR: &str = "layout";

#[derive(Debug, thiserror::Error)]
pub enum MatrixError {
    #[error("the matrix is not valid TOML for hoist conformance: {0}")]
    Toml(#[from] toml::de::Error),
    #[error("the matrix has no [[case]]")]
    NoCases,
    #[error("{place}: ${{{name}}} is not set (set it in the environment; for the samples, source target/hoist-test/env after scripts/test-env)")]
    UnsetVar { place: String, name: String },
    #[error("{place}: ${{layout}} is used, but the matrix has no [defaults] layout and no --layout was given")]
    NoLayout { place: String },
    #[error("{place}: {value:?} has an unclosed or empty ${{...}}")]
    BadVar { place: String, value: String },
    #[error("{place} is empty")]
    Empty { place: String },
    #[error("case {case:?}: expect_differ needs a written reason (a non-empty string)")]
    EmptyReason { case: String },
    #[error("case name {case:?} is used twice; names must be unique")]
    Duplicate { case: String },
    #[error("case name {case:?} must not contain whitespace")]
    BadName { case: String },
    #[error("{place}: {source}")]
    Reference {
        place: String,
        source: ReferenceError,
    },
    #[error("--cases {glob:?} matches no case of the matrix")]
    NoMatch { glob: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMatrix {
    #[serde(default)]
    defaults: RawDefaults,
    #[serde(default, rename = "case")]
    cases: Vec<RawCase>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDefaults {
    layout: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCase {
    name: Option<String>,
    benchmark: String,
    agent: String,
    gateway: Option<String>,
    task: Option<String>,
    expect_differ: Option<String>,
    container_image: Option<String>,
    container_agent: Option<String>,
}

/// The images a combination image is made of. Cases that share one share
/// its materialized tree and its `docker build` comparison.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Combination {
    pub benchmark: String,
    pub agent: String,
    pub gateway: Option<String>,
}

impl Combination {
    /// `pyfix + agent-oracle [+ gateway-replay]`, for tables and messages.
    pub fn label(&self) -> String {
        let mut s = format!(
            "{} + {}",
            short_name(&self.benchmark),
            short_name(&self.agent)
        );
        if let Some(g) = &self.gateway {
            s.push_str(" + ");
            s.push_str(&short_name(g));
        }
        s
    }
}

/// One case, with every reference expanded and parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Case {
    pub name: String,
    pub axes: Combination,
    /// Absent for a per-task image (it holds exactly one task).
    pub task: Option<String>,
    /// Why this case is known to differ between the modes.
    pub expect_differ: Option<String>,
    /// Only for proving the suite can fail (`conformance/broken.toml`):
    /// what container mode runs instead of the bake of `axes`.
    pub container: ContainerOverride,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ContainerOverride {
    /// `hoist run --mode container --image REF`.
    pub image: Option<String>,
    /// Container mode runs this agent instead of the case's.
    pub agent: Option<String>,
}

impl ContainerOverride {
    pub fn is_set(&self) -> bool {
        self.image.is_some() || self.agent.is_some()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Matrix {
    pub cases: Vec<Case>,
}

impl Matrix {
    /// Parse and validate a matrix. `env` looks up `${NAME}`s other than
    /// `${layout}`; `layout` (from `--layout`) replaces `[defaults] layout`.
    pub fn parse(
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
        layout: Option<&str>,
    ) -> Result<Matrix, MatrixError> {
        let raw: RawMatrix = toml::from_str(text)?;
        let layout = match (layout, raw.defaults.layout) {
            (Some(l), _) => Some(l.to_string()),
            (None, Some(l)) => Some(expand("[defaults] layout", &l, env, None)?),
            (None, None) => None,
        };
        if raw.cases.is_empty() {
            return Err(MatrixError::NoCases);
        }
        let mut names = BTreeSet::new();
        let mut cases = Vec::new();
        for (i, rc) in raw.cases.into_iter().enumerate() {
            let case = build_case(i, rc, env, layout.as_deref())?;
            if !names.insert(case.name.clone()) {
                return Err(MatrixError::Duplicate { case: case.name });
            }
            cases.push(case);
        }
        Ok(Matrix { cases })
    }

    /// The cases whose names match any of `globs` (all when none is
    /// given), in matrix order. A glob that matches nothing is an error,
    /// so a typo never passes as an empty run.
    pub fn select(&self, globs: &[String]) -> Result<Vec<&Case>, MatrixError> {
        for g in globs {
            if !self.cases.iter().any(|c| glob_match(g, &c.name)) {
                return Err(MatrixError::NoMatch { glob: g.clone() });
            }
        }
        Ok(self
            .cases
            .iter()
            .filter(|c| globs.is_empty() || globs.iter().any(|g| glob_match(g, &c.name)))
            .collect())
    }
}

fn build_case(
    index: usize,
    rc: RawCase,
    env: &dyn Fn(&str) -> Option<String>,
    layout: Option<&str>,
) -> Result<Case, MatrixError> {
    let id = rc.name.clone().unwrap_or_else(|| format!("#{}", index + 1));
    let image = |field: &str, v: &str| -> Result<String, MatrixError> {
        let place = format!("case {id:?}: {field}");
        let v = expand(&place, v, env, layout)?;
        if v.trim().is_empty() {
            return Err(MatrixError::Empty { place });
        }
        v.parse::<Reference>()
            .map_err(|source| MatrixError::Reference { place, source })?;
        Ok(v)
    };
    let opt_image =
        |field: &str, v: &Option<String>| v.as_deref().map(|v| image(field, v)).transpose();
    let axes = Combination {
        benchmark: image("benchmark", &rc.benchmark)?,
        agent: image("agent", &rc.agent)?,
        gateway: opt_image("gateway", &rc.gateway)?,
    };
    let task = match rc.task {
        Some(t) => Some(non_empty(
            &id,
            "task",
            expand(&format!("case {id:?}: task"), &t, env, layout)?,
        )?),
        None => None,
    };
    let container = ContainerOverride {
        image: opt_image("container_image", &rc.container_image)?,
        agent: opt_image("container_agent", &rc.container_agent)?,
    };
    let name = match rc.name {
        Some(n) => non_empty(&id, "name", n)?,
        None => default_name(&axes, task.as_deref()),
    };
    if name.chars().any(char::is_whitespace) {
        return Err(MatrixError::BadName { case: name });
    }
    let expect_differ = match rc.expect_differ {
        Some(r) if r.trim().is_empty() => return Err(MatrixError::EmptyReason { case: name }),
        other => other.map(|r| r.trim().to_string()),
    };
    Ok(Case {
        name,
        axes,
        task,
        expect_differ,
        container,
    })
}

fn non_empty(case: &str, field: &str, v: String) -> Result<String, MatrixError> {
    if v.trim().is_empty() {
        return Err(MatrixError::Empty {
            place: format!("case {case:?}: {field}"),
        });
    }
    Ok(v)
}

/// Replace every `${NAME}` in `value`: `${layout}` by `layout`, anything
/// else by `env`. There is no escape: references never contain `${`.
pub fn expand(
    place: &str,
    value: &str,
    env: &dyn Fn(&str) -> Option<String>,
    layout: Option<&str>,
) -> Result<String, MatrixError> {
    let mut out = String::new();
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let bad = || MatrixError::BadVar {
            place: place.to_string(),
            value: value.to_string(),
        };
        let end = after.find('}').ok_or_else(bad)?;
        let name = &after[..end];
        if name.is_empty() {
            return Err(bad());
        }
        let v = if name == LAYOUT_VAR {
            layout
                .map(str::to_string)
                .ok_or_else(|| MatrixError::NoLayout {
                    place: place.to_string(),
                })?
        } else {
            env(name).ok_or_else(|| MatrixError::UnsetVar {
                place: place.to_string(),
                name: name.to_string(),
            })?
        };
        out.push_str(&v);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// `BENCHMARK[/TASK]/AGENT[+GATEWAY]`, each image by its short name.
pub fn default_name(axes: &Combination, task: Option<&str>) -> String {
    let mut parts = vec![short_name(&axes.benchmark)];
    parts.extend(task.map(str::to_string));
    let mut agent = short_name(&axes.agent);
    if let Some(g) = &axes.gateway {
        agent.push('+');
        agent.push_str(&short_name(g));
    }
    parts.push(agent);
    parts.join("/")
}

/// An image's short name: an `oci:` layout's tag (or digest prefix), a
/// registry image's last repository component (with a tag other than
/// `latest`).
pub fn short_name(reference: &str) -> String {
    let short_digest =
        |d: &crate::digest::Digest| format!("@{}", &d.hex()[..12.min(d.hex().len())]);
    match reference.parse::<Reference>() {
        Ok(Reference::Layout(l)) => match (&l.tag, &l.digest) {
            (Some(t), _) => t.clone(),
            (None, Some(d)) => short_digest(d),
            (None, None) => l
                .path
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_else(|| reference.to_string()),
        },
        Ok(Reference::Registry(r)) => {
            let last = r.repository.rsplit('/').next().unwrap_or(&r.repository);
            match (&r.tag, &r.digest) {
                (Some(t), _) if t != "latest" => format!("{last}:{t}"),
                (_, Some(d)) => format!("{last}{}", short_digest(d)),
                _ => last.to_string(),
            }
        }
        Err(_) => reference.to_string(),
    }
}

/// Shell-style glob: `*` matches any run of characters (`/` included),
/// `?` exactly one; everything else matches itself.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    // reach[j]: the pattern prefix consumed so far matches name[..j].
    let mut reach = vec![false; n.len() + 1];
    reach[0] = true;
    for &c in &p {
        let mut next = vec![false; n.len() + 1];
        for j in 0..=n.len() {
            if !reach[j] {
                continue;
            }
            if c == '*' {
                next[j..].iter_mut().for_each(|x| *x = true);
                break;
            }
            if j < n.len() && (c == '?' || c == n[j]) {
                next[j + 1] = true;
            }
        }
        reach = next;
    }
    reach[n.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "SAMPLES" => Some("/s/oci".into()),
            "REG" => Some("127.0.0.1:5000".into()),
            _ => None,
        }
    }

    fn parse(text: &str) -> Result<Matrix, MatrixError> {
        Matrix::parse(text, &env, None)
    }

    const ONE: &str = r#"
        [defaults]
        layout = "${SAMPLES}"
        [[case]]
        benchmark = "oci:${layout}:pyfix"
        agent = "oci:${layout}:agent-oracle"
        task = "ini-quoted-values"
    "#;

    #[test]
    fn parses_a_case_and_expands_the_layout() {
        let m = parse(ONE).unwrap();
        let c = &m.cases[0];
        assert_eq!(c.axes.benchmark, "oci:/s/oci:pyfix");
        assert_eq!(c.axes.agent, "oci:/s/oci:agent-oracle");
        assert_eq!(c.axes.gateway, None);
        assert_eq!(c.task.as_deref(), Some("ini-quoted-values"));
        assert_eq!(c.name, "pyfix/ini-quoted-values/agent-oracle");
        assert_eq!(c.expect_differ, None);
        assert!(!c.container.is_set());
    }

    #[test]
    fn layout_flag_overrides_the_default_and_needs_no_env() {
        let m = Matrix::parse(
            &ONE.replace("${SAMPLES}", "${UNSET}"),
            &env,
            Some("/elsewhere"),
        )
        .unwrap();
        assert_eq!(m.cases[0].axes.benchmark, "oci:/elsewhere:pyfix");
    }

    #[test]
    fn unset_variable_is_named() {
        let err = parse(&ONE.replace("${SAMPLES}", "${HOIST_SAMPLES_OCI}")).unwrap_err();
        assert!(matches!(&err, MatrixError::UnsetVar { name, .. } if name == "HOIST_SAMPLES_OCI"));
        assert!(err.to_string().contains("[defaults] layout"), "{err}");
    }

    #[test]
    fn layout_without_a_default_is_an_error() {
        let err = parse(
            r#"[[case]]
            benchmark = "oci:${layout}:pyfix"
            agent = "oci:/a:x""#,
        )
        .unwrap_err();
        assert!(matches!(err, MatrixError::NoLayout { .. }), "{err}");
    }

    #[test]
    fn environment_variables_expand_in_any_field() {
        let m = parse(
            r#"[[case]]
            benchmark = "${REG}/samples/pyfix:latest"
            agent = "${REG}/samples/agent-noop"
            gateway = "oci:${SAMPLES}:gateway-replay"
            task = "t1""#,
        )
        .unwrap();
        let c = &m.cases[0];
        assert_eq!(c.axes.benchmark, "127.0.0.1:5000/samples/pyfix:latest");
        assert_eq!(c.axes.gateway.as_deref(), Some("oci:/s/oci:gateway-replay"));
        assert_eq!(c.name, "pyfix/t1/agent-noop+gateway-replay");
    }

    #[test]
    fn unclosed_variable_is_an_error() {
        assert!(matches!(
            expand("x", "oci:${layout", &env, Some("/l")),
            Err(MatrixError::BadVar { .. })
        ));
        assert!(matches!(
            expand("x", "a${}b", &env, Some("/l")),
            Err(MatrixError::BadVar { .. })
        ));
        assert_eq!(
            expand("x", "${layout}/${SAMPLES}", &env, Some("/l")).unwrap(),
            "/l//s/oci"
        );
    }

    #[test]
    fn expect_differ_needs_a_reason() {
        let with = |reason: &str| format!("{ONE}\nexpect_differ = {reason:?}\n");
        let err = parse(&with("  ")).unwrap_err();
        assert!(matches!(err, MatrixError::EmptyReason { .. }), "{err}");
        let m = parse(&with(" the probe sees docker's /.dockerenv ")).unwrap();
        assert_eq!(
            m.cases[0].expect_differ.as_deref(),
            Some("the probe sees docker's /.dockerenv")
        );
    }

    #[test]
    fn expect_differ_must_be_a_string() {
        let err = parse(&format!("{ONE}\nexpect_differ = true\n")).unwrap_err();
        assert!(matches!(err, MatrixError::Toml(_)), "{err}");
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = parse(&format!("{ONE}\nexpect_differs = \"typo\"\n")).unwrap_err();
        assert!(err.to_string().contains("expect_differs"), "{err}");
    }

    #[test]
    fn duplicate_names_are_refused() {
        let text = format!("{ONE}\n{}", &ONE[ONE.find("[[case]]").unwrap()..]);
        let err = parse(&text).unwrap_err();
        assert!(matches!(err, MatrixError::Duplicate { .. }), "{err}");
    }

    #[test]
    fn empty_matrix_and_bad_fields_are_refused() {
        assert!(matches!(parse(""), Err(MatrixError::NoCases)));
        let err = parse(&ONE.replace("agent-oracle", "Agent Oracle")).unwrap_err();
        assert!(matches!(err, MatrixError::Reference { .. }), "{err}");
        let err = parse(&ONE.replace("ini-quoted-values", "")).unwrap_err();
        assert!(matches!(err, MatrixError::Empty { .. }), "{err}");
        let err = parse(&format!("{ONE}\nname = \"a b\"\n")).unwrap_err();
        assert!(matches!(err, MatrixError::BadName { .. }), "{err}");
        let err = parse(
            r#"[[case]]
            agent = "oci:/a:x""#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("benchmark"), "{err}");
    }

    #[test]
    fn container_overrides_are_parsed() {
        let text = format!(
            "{ONE}\nname = \"broken/x\"\ncontainer_image = \"${{REG}}/c:1\"\ncontainer_agent = \"oci:${{layout}}:agent-noop\"\n"
        );
        let c = &parse(&text).unwrap().cases[0];
        assert_eq!(c.name, "broken/x");
        assert_eq!(c.container.image.as_deref(), Some("127.0.0.1:5000/c:1"));
        assert_eq!(c.container.agent.as_deref(), Some("oci:/s/oci:agent-noop"));
        assert!(c.container.is_set());
    }

    #[test]
    fn short_names() {
        assert_eq!(short_name("oci:/x/oci:swe-mini-a"), "swe-mini-a");
        assert_eq!(
            short_name("oci:/x/oci@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"),
            "@0123456789ab"
        );
        assert_eq!(short_name("127.0.0.1:5000/samples/pyfix:latest"), "pyfix");
        assert_eq!(short_name("127.0.0.1:5000/samples/pyfix:v2"), "pyfix:v2");
        assert_eq!(short_name("alpine"), "alpine");
    }

    #[test]
    fn globs() {
        assert!(glob_match("*", "pyfix/a/agent-oracle"));
        assert!(glob_match("pyfix/*/agent-noop", "pyfix/a/agent-noop"));
        assert!(!glob_match("pyfix/*/agent-noop", "pyfix/a/agent-oracle"));
        assert!(glob_match("swe-mini-*", "swe-mini-x/agent-oracle"));
        assert!(glob_match("p?fix*", "pyfix"));
        assert!(!glob_match("p?fix", "pfix"));
        assert!(glob_match("exact", "exact"));
        assert!(!glob_match("exact", "exactly"));
        assert!(glob_match("*ly", "exactly"));
        assert!(glob_match("", ""));
        assert!(!glob_match("", "a"));
    }

    #[test]
    fn select_filters_in_matrix_order_and_refuses_dead_globs() {
        let text = format!(
            "{ONE}\n{}",
            ONE[ONE.find("[[case]]").unwrap()..].replace("agent-oracle", "agent-noop")
        );
        let m = parse(&text).unwrap();
        let all: Vec<&str> = m
            .select(&[])
            .unwrap()
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(
            all,
            [
                "pyfix/ini-quoted-values/agent-oracle",
                "pyfix/ini-quoted-values/agent-noop"
            ]
        );
        let some = m.select(&["*noop".into()]).unwrap();
        assert_eq!(some.len(), 1);
        assert!(matches!(
            m.select(&["*noop".into(), "nothing*".into()]),
            Err(MatrixError::NoMatch { .. })
        ));
    }

    #[test]
    fn combination_label() {
        let c = Combination {
            benchmark: "oci:/s:pyfix".into(),
            agent: "oci:/s:agent-scripted".into(),
            gateway: Some("oci:/s:gateway-replay".into()),
        };
        assert_eq!(c.label(), "pyfix + agent-scripted + gateway-replay");
    }
}
