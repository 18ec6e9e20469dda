//! The project documents its own contract (docs/README.md): every
//! `docs/….md` the source cites exists, no citation of a document outside
//! the repository is left, and the links between the pages (and from the
//! README) reach a file and, where they name one, a heading. Pure reads of
//! the tree; nothing is run.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Every `.rs` file beneath `dir`, sorted.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            out.extend(rust_files(&p));
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
    out
}

/// The `docs/NAME.md` paths in `text`: `docs/` at the start of a word (a
/// space, `(` or a backtick before it, not a path such as a test's
/// `"docs/a.md"` or `x/docs/`), then a name of `A-Z a-z 0-9 - _`, then
/// `.md`.
fn cited_docs(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    for (at, _) in text.match_indices("docs/") {
        let before = text[..at].chars().next_back();
        if !before.is_none_or(|c| c.is_whitespace() || c == '(' || c == '`') {
            continue;
        }
        let rest = &text[at + "docs/".len()..];
        let name_len = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
            .unwrap_or(rest.len());
        if name_len > 0 && rest[name_len..].starts_with(".md") {
            found.push(format!("docs/{}.md", &rest[..name_len]));
        }
    }
    found
}

/// The relative Markdown link targets in `text`: what `](` opens up to
/// `)`, leaving out URLs.
fn links(text: &str) -> Vec<&str> {
    text.match_indices("](")
        .filter_map(|(at, _)| {
            let rest = &text[at + 2..];
            rest.find(')').map(|end| &rest[..end])
        })
        .filter(|t| !t.contains("://") && !t.starts_with("mailto:"))
        .collect()
}

/// GitHub's anchor for a heading: lower case, spaces to `-`, and only
/// letters, digits, `-` and `_` kept.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// The anchors of the headings of a Markdown file, outside code blocks.
fn anchors(text: &str) -> BTreeSet<String> {
    let mut fenced = false;
    let mut out = BTreeSet::new();
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        if let Some(h) = line.strip_prefix('#') {
            out.insert(slug(h.trim_start_matches('#')));
        }
    }
    out
}

#[test]
fn slugs_follow_github() {
    assert_eq!(slug(" task.json"), "taskjson");
    assert_eq!(
        slug(" What the kernel cannot give: `not_isolated` and `--isolation strict`"),
        "what-the-kernel-cannot-give-not_isolated-and---isolation-strict"
    );
    assert_eq!(
        slug(" Keeping the agent from `/tests`, `/tasks` and `/opt/gateway`"),
        "keeping-the-agent-from-tests-tasks-and-optgateway"
    );
}

#[test]
fn cited_docs_finds_paths_only() {
    assert_eq!(
        cited_docs(
            "see docs/images.md, (docs/exit-codes.md) `docs/result.md`; docs/ docs/x.rs \"docs/a.md\" x/docs/b.md"
        ),
        ["docs/images.md", "docs/exit-codes.md", "docs/result.md"]
    );
}

#[test]
fn every_doc_cited_in_src_exists() {
    let mut missing = Vec::new();
    let mut cited = BTreeSet::new();
    for file in rust_files(&repo().join("src")) {
        let text = std::fs::read_to_string(&file).unwrap();
        for doc in cited_docs(&text) {
            if !repo().join(&doc).is_file() {
                missing.push(format!("{}: {doc}", file.display()));
            }
            cited.insert(doc);
        }
    }
    assert!(missing.is_empty(), "cited but missing: {missing:#?}");
    // The contract's pages are what the source cites.
    for page in [
        "docs/images.md",
        "docs/pipeline.md",
        "docs/result.md",
        "docs/exit-codes.md",
        "docs/threat-model.md",
    ] {
        assert!(cited.contains(page), "{page} is cited nowhere in src/");
    }
}

#[test]
fn no_citation_of_the_design_document_is_left_in_src() {
    let mut left = Vec::new();
    for file in rust_files(&repo().join("src")) {
        let text = std::fs::read_to_string(&file).unwrap();
        for (n, line) in text.lines().enumerate() {
            if line.contains("DESIGN §") || line.contains("DESIGN.md") {
                left.push(format!("{}:{}: {}", file.display(), n + 1, line.trim()));
            }
        }
    }
    assert!(left.is_empty(), "cite docs/ instead: {left:#?}");
}

#[test]
fn links_between_the_docs_and_from_the_readme_resolve() {
    let mut pages: Vec<PathBuf> = std::fs::read_dir(repo().join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    pages.sort();
    pages.push(repo().join("README.md"));
    let mut broken = Vec::new();
    for page in &pages {
        let text = std::fs::read_to_string(page).unwrap();
        let dir = page.parent().unwrap();
        for target in links(&text) {
            let (file, anchor) = target.split_once('#').unwrap_or((target, ""));
            let path = if file.is_empty() {
                page.clone()
            } else {
                dir.join(file)
            };
            if !path.exists() {
                broken.push(format!("{}: {target} (no such file)", page.display()));
                continue;
            }
            let is_md = path.extension().is_some_and(|e| e == "md");
            if anchor.is_empty() || !is_md {
                continue;
            }
            let headings = anchors(&std::fs::read_to_string(&path).unwrap());
            if !headings.contains(anchor) {
                broken.push(format!("{}: {target} (no such heading)", page.display()));
            }
        }
    }
    assert!(broken.is_empty(), "broken links: {broken:#?}");
}
