//! OpenAssistant (oasst1) message trees, flat or nested, flattened into one conversation per
//! root-to-leaf path. Siblings are visited best rank first, so the best path of a tree comes first.
//! With `--pairs-from-ranks`, the trees become preference pairs instead: for each prompt, every
//! pair of its ranked replies, the better-ranked one chosen.

use std::collections::{HashMap, HashSet};

use serde_json::{Map, Value};

use super::Sink;
use crate::{Conversation, Message, Result, Role};

struct Node {
    line: usize,
    role: Role,
    text: String,
    rank: Option<f64>,
    children: Vec<usize>,
}

/// What a tree becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Paths {
    All,
    BestOnly,
    RankedPairs,
}

impl Paths {
    pub(super) fn of(opts: &super::ReadOptions) -> Paths {
        match (opts.pairs_from_ranks, opts.oasst_best_only) {
            (true, _) => Paths::RankedPairs,
            (false, true) => Paths::BestOnly,
            (false, false) => Paths::All,
        }
    }
}

#[derive(Default)]
struct Forest {
    nodes: Vec<Node>,
    /// Roots with the tree id and language they carry.
    roots: Vec<(usize, Option<Value>, Option<Value>)>,
}

fn parse_node(obj: &Map<String, Value>) -> std::result::Result<(Role, String, Option<f64>), String> {
    let text = obj
        .get("text")
        .and_then(Value::as_str)
        .ok_or("message has no \"text\"")?
        .to_string();
    let role = match obj.get("role").and_then(Value::as_str) {
        Some("prompter") | Some("user") => Role::User,
        Some("assistant") => Role::Assistant,
        Some(other) => return Err(format!("unknown role '{other}' (expected prompter or assistant)")),
        None => return Err("message has no \"role\"".into()),
    };
    Ok((role, text, obj.get("rank").and_then(Value::as_f64)))
}

fn is_deleted(obj: &Map<String, Value>) -> bool {
    obj.get("deleted").and_then(Value::as_bool).unwrap_or(false)
}

/// Flat oasst1 messages (`message_id`, `parent_id`, …), in any order within the file.
pub(super) fn read_messages(items: Vec<(usize, Value)>, paths: Paths, sink: &mut Sink<'_>) -> Result<()> {
    let mut forest = Forest::default();
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut parents: Vec<(usize, Option<String>)> = Vec::new();
    let mut tree_info: Vec<(Option<Value>, Option<Value>)> = Vec::new();
    for (line, value) in items {
        let Some(obj) = value.as_object() else {
            sink.invalid(sink.error(sink.at(line), "expected a JSON object"))?;
            continue;
        };
        if is_deleted(obj) {
            continue;
        }
        let Some(id) = obj.get("message_id").and_then(Value::as_str) else {
            sink.invalid(sink.error(sink.at(line), "message has no \"message_id\""))?;
            continue;
        };
        let (role, text, rank) = match parse_node(obj) {
            Ok(n) => n,
            Err(msg) => {
                sink.invalid(sink.error(sink.at(line), msg))?;
                continue;
            }
        };
        index.insert(id.to_string(), forest.nodes.len());
        parents.push((
            line,
            obj.get("parent_id").and_then(Value::as_str).map(str::to_string),
        ));
        tree_info.push((obj.get("message_tree_id").cloned(), obj.get("lang").cloned()));
        forest.nodes.push(Node {
            line,
            role,
            text,
            rank,
            children: Vec::new(),
        });
    }
    for (i, (line, parent)) in parents.into_iter().enumerate() {
        match parent {
            None => {
                let (tree, lang) = tree_info[i].clone();
                forest.roots.push((i, tree, lang));
            }
            Some(p) => match index.get(&p) {
                Some(&pi) => forest.nodes[pi].children.push(i),
                None => sink.invalid(sink.error(
                    sink.at(line),
                    format!("parent message {p} is not in the file (or was deleted)"),
                ))?,
            },
        }
    }
    emit(&mut forest, paths, sink)
}

/// Exported trees (`*.trees.jsonl`): `{"message_tree_id", "prompt": {…, "replies": [...]}}`.
pub(super) fn read_trees(items: Vec<(usize, Value)>, paths: Paths, sink: &mut Sink<'_>) -> Result<()> {
    let mut forest = Forest::default();
    for (line, value) in items {
        let Some(prompt) = value.get("prompt").and_then(Value::as_object) else {
            sink.invalid(sink.error(sink.at(line), "tree has no \"prompt\" message"))?;
            continue;
        };
        match add_subtree(&mut forest.nodes, prompt, line) {
            Ok(Some(root)) => {
                let tree = value.get("message_tree_id").cloned();
                let lang = prompt.get("lang").cloned();
                forest.roots.push((root, tree, lang));
            }
            Ok(None) => {}
            Err(msg) => sink.invalid(sink.error(sink.at(line), msg))?,
        }
    }
    emit(&mut forest, paths, sink)
}

fn add_subtree(
    nodes: &mut Vec<Node>,
    obj: &Map<String, Value>,
    line: usize,
) -> std::result::Result<Option<usize>, String> {
    if is_deleted(obj) {
        return Ok(None);
    }
    let (role, text, rank) = parse_node(obj)?;
    let mut children = Vec::new();
    for reply in obj.get("replies").and_then(Value::as_array).into_iter().flatten() {
        let reply = reply.as_object().ok_or("a reply is not an object")?;
        children.extend(add_subtree(nodes, reply, line)?);
    }
    nodes.push(Node {
        line,
        role,
        text,
        rank,
        children,
    });
    Ok(Some(nodes.len() - 1))
}

fn emit(forest: &mut Forest, paths: Paths, sink: &mut Sink<'_>) -> Result<()> {
    let best_only = paths == Paths::BestOnly;
    // Best rank (0) first; unranked replies after ranked ones, in file order.
    let ranks: Vec<Option<f64>> = forest.nodes.iter().map(|n| n.rank).collect();
    for node in &mut forest.nodes {
        node.children.sort_by(|a, b| match (ranks[*a], ranks[*b]) {
            (Some(x), Some(y)) => x.total_cmp(&y),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => std::cmp::Ordering::Equal,
        });
    }
    let meta = |c: &mut Conversation, tree: &Option<Value>, lang: &Option<Value>| {
        if let Some(t) = tree {
            c.meta.insert("message_tree_id".into(), t.clone());
        }
        if let Some(l) = lang {
            c.meta.insert("lang".into(), l.clone());
        }
    };
    if paths == Paths::RankedPairs {
        for (root, tree, lang) in &forest.roots {
            let mut pairs = Vec::new();
            ranked_pairs(&forest.nodes, *root, &mut Vec::new(), &mut pairs);
            for mut c in pairs {
                meta(&mut c, tree, lang);
                sink.push(sink.at(forest.nodes[*root].line), Ok(c))?;
            }
        }
        return Ok(());
    }
    for (root, tree, lang) in &forest.roots {
        let mut paths = Vec::new();
        collect_paths(&forest.nodes, *root, &mut Vec::new(), best_only, &mut paths);
        let mut seen = HashSet::new();
        for mut path in paths {
            // A conversation ends on the assistant's reply: drop unanswered prompts at the end.
            while path.last().is_some_and(|&i| forest.nodes[i].role == Role::User) {
                path.pop();
            }
            if path.is_empty() || !seen.insert(path.clone()) {
                continue;
            }
            let messages = path
                .iter()
                .map(|&i| Message::new(forest.nodes[i].role, forest.nodes[i].text.clone()))
                .collect();
            let mut c = Conversation::new(messages);
            meta(&mut c, tree, lang);
            sink.push(sink.at(forest.nodes[*root].line), Ok(c))?;
            if best_only {
                break;
            }
        }
    }
    Ok(())
}

/// Below `at` (whose ancestors are `prefix`): for each prompt, a pair for each two of its
/// replies of different ranks, the better one chosen; the prompt is the path to it.
fn ranked_pairs(nodes: &[Node], at: usize, prefix: &mut Vec<usize>, out: &mut Vec<Conversation>) {
    prefix.push(at);
    let node = &nodes[at];
    if node.role == Role::User {
        // Children are sorted best rank first; unranked replies come last and take no part.
        let ranked: Vec<(usize, f64)> = node
            .children
            .iter()
            .filter(|&&c| nodes[c].role == Role::Assistant)
            .filter_map(|&c| nodes[c].rank.map(|r| (c, r)))
            .collect();
        for (i, &(better, rb)) in ranked.iter().enumerate() {
            for &(worse, rw) in &ranked[i + 1..] {
                if rb < rw {
                    let message = |k: usize| Message::new(nodes[k].role, nodes[k].text.clone());
                    out.push(Conversation::pair(
                        prefix.iter().map(|&k| message(k)).collect(),
                        vec![message(better)],
                        vec![message(worse)],
                    ));
                }
            }
        }
    }
    for &child in &node.children {
        ranked_pairs(nodes, child, prefix, out);
    }
    prefix.pop();
}

fn collect_paths(
    nodes: &[Node],
    at: usize,
    prefix: &mut Vec<usize>,
    best_only: bool,
    out: &mut Vec<Vec<usize>>,
) {
    prefix.push(at);
    let children = &nodes[at].children;
    if children.is_empty() {
        out.push(prefix.clone());
    } else {
        let take = if best_only { 1 } else { children.len() };
        for &child in children.iter().take(take) {
            collect_paths(nodes, child, prefix, best_only, out);
        }
    }
    prefix.pop();
}
