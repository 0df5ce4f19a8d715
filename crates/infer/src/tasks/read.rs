//! Task files: JSONL (or JSON, parquet) documents with `query` (or `context`), `choices` and
//! `gold`, as lm-eval's processed HellaSwag has them; or an lm-evaluation-harness task YAML whose
//! fields are plain (`doc_to_text`, `doc_to_choice`, `doc_to_target` as field names or simple
//! Jinja, `output_type: multiple_choice`) over local JSONL or parquet documents.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use super::{Doc, Task};
use crate::{Error, Result};

/// What the command line adds to a task file.
#[derive(Debug, Clone, Default)]
pub struct TaskOptions {
    /// Few-shot examples per document [default: the YAML's `num_fewshot`, else 0].
    pub num_fewshot: Option<usize>,
    /// Documents the few-shot examples come from (JSONL tasks) [default: the task's own].
    pub fewshot: Option<PathBuf>,
    /// Between a context and its answer [default: the YAML's `target_delimiter`, else `" "`].
    pub delimiter: Option<String>,
    /// Score the first N documents only.
    pub limit: Option<usize>,
}

fn bad(path: &Path, msg: impl std::fmt::Display) -> Error {
    Error::Invalid(format!("{}: {msg}", path.display()))
}

/// Reads a task: a YAML task config (`.yaml`, `.yml`) or a documents file.
pub fn read_task(path: &Path, opts: &TaskOptions) -> Result<Task> {
    let ext = path.extension().map(|e| e.to_string_lossy().to_ascii_lowercase());
    let mut task = if matches!(ext.as_deref(), Some("yaml" | "yml")) {
        read_yaml(path, opts)?
    } else {
        let fields = Fields::plain();
        let docs = read_docs(path, &fields)?;
        let fewshot = match &opts.fewshot {
            Some(f) => read_docs(f, &fields)?,
            None => docs.clone(),
        };
        Task {
            name: path
                .file_stem()
                .map(|s| s.to_string_lossy().trim_end_matches(".jsonl").to_string())
                .unwrap_or_else(|| "task".into()),
            docs,
            fewshot,
            num_fewshot: 0,
            target_delimiter: " ".into(),
            fewshot_delimiter: "\n\n".into(),
        }
    };
    if let Some(n) = opts.num_fewshot {
        task.num_fewshot = n;
    }
    if let Some(d) = &opts.delimiter {
        task.target_delimiter = d.clone();
    }
    if let Some(n) = opts.limit {
        task.docs.truncate(n);
    }
    if task.docs.is_empty() {
        return Err(bad(path, "no documents"));
    }
    Ok(task)
}

/// How a record becomes a document: lm-eval's `doc_to_text`, `doc_to_choice`, `doc_to_target`.
struct Fields {
    text: Field,
    choice: Field,
    target: Field,
}

enum Field {
    /// A field of the record, or (for text) the first present of several; `strict`: the record
    /// must have one (lm-eval renders a name no record has as text, `doc_to_choice: ["no", "yes"]`).
    Names(Vec<String>, bool),
    /// A Jinja template rendered with the record.
    Template(String),
    /// A fixed value (`doc_to_choice: ["yes", "no"]`, `doc_to_target: 0`).
    Fixed(Value),
}

impl Fields {
    fn plain() -> Fields {
        let names = |n: &[&str]| Field::Names(n.iter().map(|s| s.to_string()).collect(), true);
        Fields {
            text: names(&["query", "context"]),
            choice: names(&["choices"]),
            target: names(&["gold"]),
        }
    }
}

fn field_of(v: &Value) -> Field {
    match v {
        Value::String(s) if s.contains("{{") || s.contains("{%") => Field::Template(s.clone()),
        Value::String(s) => Field::Names(vec![s.clone()], false),
        other => Field::Fixed(other.clone()),
    }
}

/// A field's value for `record`: the named field (when the record has it), a template rendered
/// (a whole `{{ expression }}` evaluated to its value), or the fixed value.
fn resolve(
    f: &Field,
    record: &Value,
    env: &minijinja::Environment<'_>,
) -> std::result::Result<Value, String> {
    match f {
        Field::Fixed(v) => Ok(v.clone()),
        Field::Names(names, strict) => names
            .iter()
            .find_map(|n| record.get(n).cloned())
            .or_else(|| (!strict && names.len() == 1).then(|| Value::String(names[0].clone())))
            .ok_or_else(|| format!("has none of the fields {}", names.join(", "))),
        Field::Template(t) => {
            let ctx = to_jinja(record);
            let trimmed = t.trim();
            if let Some(expr) = trimmed
                .strip_prefix("{{")
                .and_then(|s| s.strip_suffix("}}"))
                .filter(|e| !e.contains("{{") && !e.contains("}}"))
            {
                let v = env
                    .compile_expression(expr.trim())
                    .and_then(|e| e.eval(ctx))
                    .map_err(|e| format!("template {t:?}: {e}"))?;
                return Ok(from_jinja(&v));
            }
            env.render_str(t, ctx)
                .map(Value::String)
                .map_err(|e| format!("template {t:?}: {e}"))
        }
    }
}

fn to_jinja(v: &Value) -> minijinja::Value {
    use minijinja::Value as J;
    match v {
        Value::Null => J::from(()),
        Value::Bool(b) => J::from(*b),
        Value::Number(n) => n
            .as_i64()
            .map_or_else(|| J::from(n.as_f64().unwrap_or(f64::NAN)), J::from),
        Value::String(s) => J::from(s.as_str()),
        Value::Array(a) => J::from(a.iter().map(to_jinja).collect::<Vec<_>>()),
        Value::Object(o) => J::from_pairs(
            o.iter()
                .map(|(k, v)| (k.as_str(), to_jinja(v)))
                .collect::<Vec<_>>(),
        ),
    }
}

fn from_jinja(v: &minijinja::Value) -> Value {
    use minijinja::value::ValueKind;
    match v.kind() {
        ValueKind::Bool => Value::Bool(v.is_true()),
        ValueKind::Number => i64::try_from(v.clone())
            .map(Value::from)
            .or_else(|_| f64::try_from(v.clone()).map(Value::from))
            .unwrap_or(Value::Null),
        ValueKind::String => Value::String(v.as_str().unwrap_or_default().to_string()),
        ValueKind::Seq | ValueKind::Iterable => Value::Array(
            v.try_iter()
                .into_iter()
                .flatten()
                .map(|x| from_jinja(&x))
                .collect(),
        ),
        ValueKind::Map => Value::Object(
            v.try_iter()
                .into_iter()
                .flatten()
                .filter_map(|k| {
                    let item = v.get_item(&k).ok()?;
                    Some((
                        k.as_str().map(str::to_string).unwrap_or_else(|| k.to_string()),
                        from_jinja(&item),
                    ))
                })
                .collect(),
        ),
        _ => Value::Null,
    }
}

/// A rendered text that is a list (`['a', 'b']`, `["a", "b"]`) or a number, as lm-eval's
/// `ast.literal_eval` reads it.
fn literal(v: Value) -> Value {
    let Value::String(s) = &v else { return v };
    let t = s.trim();
    if let Ok(n) = t.parse::<u64>() {
        return Value::from(n);
    }
    if t.starts_with('[') && t.ends_with(']') {
        if let Ok(list) = serde_json::from_str::<Value>(t) {
            return list;
        }
        // A Python list of single-quoted strings.
        if let Ok(list) = serde_json::from_str::<Value>(&python_list_to_json(t)) {
            return list;
        }
    }
    v
}

fn python_list_to_json(t: &str) -> String {
    let mut out = String::new();
    let mut quote: Option<char> = None;
    let mut chars = t.chars().peekable();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (None, '\'' | '"') => {
                quote = Some(c);
                out.push('"');
            }
            (Some(q), c) if c == q => {
                quote = None;
                out.push('"');
            }
            (Some(_), '\\') => {
                if let Some(n) = chars.next() {
                    match n {
                        '\'' => out.push('\''),
                        other => {
                            out.push('\\');
                            out.push(other);
                        }
                    }
                }
            }
            (Some(_), '"') => out.push_str("\\\""),
            (_, c) => out.push(c),
        }
    }
    out
}

fn to_doc(
    record: &Value,
    fields: &Fields,
    env: &minijinja::Environment<'_>,
) -> std::result::Result<Doc, String> {
    let text = match literal(resolve(&fields.text, record, env)?) {
        Value::String(s) => s,
        other => return Err(format!("the text is not a string: {other}")),
    };
    let choices: Vec<String> = match literal(resolve(&fields.choice, record, env)?) {
        Value::Array(a) => a
            .into_iter()
            .map(|c| match c {
                Value::String(s) => Ok(s),
                other => Ok(other.to_string()),
            })
            .collect::<std::result::Result<_, String>>()?,
        other => return Err(format!("the choices are not a list: {other}")),
    };
    if choices.len() < 2 {
        return Err("fewer than two choices".into());
    }
    let gold = match literal(resolve(&fields.target, record, env)?) {
        Value::Number(n) => n
            .as_u64()
            .map(|g| g as usize)
            .ok_or("the gold index is not a whole number")?,
        Value::String(s) => choices
            .iter()
            .position(|c| *c == s)
            .ok_or_else(|| format!("the gold answer {s:?} is not one of the choices"))?,
        other => {
            return Err(format!(
                "the gold answer is neither an index nor a choice: {other}"
            ));
        }
    };
    if gold >= choices.len() {
        return Err(format!("gold index {gold} for {} choices", choices.len()));
    }
    Ok(Doc {
        text,
        choices,
        gold,
        source: record.clone(),
    })
}

fn env() -> minijinja::Environment<'static> {
    let mut env = minijinja::Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    env
}

fn read_docs(path: &Path, fields: &Fields) -> Result<Vec<Doc>> {
    let env = env();
    chatforge_data::read_rows(path)?
        .into_iter()
        .map(|(pos, record)| {
            to_doc(&record, fields, &env)
                .map_err(|e| Error::Invalid(format!("{}:{pos}: {e}", path.display())))
        })
        .collect()
}

/// The part of an lm-eval task config chatforge reads; anything else is left alone.
#[derive(Deserialize)]
struct TaskYaml {
    task: Option<String>,
    dataset_path: Option<String>,
    #[serde(default)]
    dataset_kwargs: Option<DatasetKwargs>,
    output_type: Option<String>,
    test_split: Option<String>,
    validation_split: Option<String>,
    training_split: Option<String>,
    fewshot_split: Option<String>,
    doc_to_text: Option<Value>,
    doc_to_choice: Option<Value>,
    doc_to_target: Option<Value>,
    target_delimiter: Option<String>,
    fewshot_delimiter: Option<String>,
    num_fewshot: Option<usize>,
    fewshot_config: Option<FewshotConfig>,
    description: Option<String>,
    include: Option<String>,
    process_docs: Option<Value>,
}

#[derive(Deserialize)]
struct DatasetKwargs {
    data_files: Option<DataFiles>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum DataFiles {
    One(String),
    Split(BTreeMap<String, OneOrMany>),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct FewshotConfig {
    sampler: Option<String>,
}

fn read_yaml(path: &Path, opts: &TaskOptions) -> Result<Task> {
    let text = chatforge_data::read_capped(path, 1 << 20)?;
    let y: TaskYaml = yaml_serde::from_str(&text).map_err(|e| {
        bad(
            path,
            format!(
                "not a task config chatforge reads ({e}); `!function` fields are Python and are not supported"
            ),
        )
    })?;
    if y.output_type.as_deref() != Some("multiple_choice") {
        return Err(bad(
            path,
            format!(
                "output_type {:?}: only multiple_choice tasks are scored",
                y.output_type
            ),
        ));
    }
    for (set, what) in [
        (y.include.is_some(), "include"),
        (y.process_docs.is_some(), "process_docs"),
        (
            y.description.as_deref().is_some_and(|d| !d.is_empty()),
            "description",
        ),
    ] {
        if set {
            return Err(bad(
                path,
                format!("`{what}` is not supported: give the task's fields in this file"),
            ));
        }
    }
    if let Some(s) = y.fewshot_config.as_ref().and_then(|f| f.sampler.as_deref())
        && s != "first_n"
    {
        return Err(bad(
            path,
            format!("fewshot sampler {s:?}: chatforge takes few-shot examples in order (first_n)"),
        ));
    }
    match y.dataset_path.as_deref() {
        Some("json" | "parquet") => {}
        other => {
            return Err(bad(
                path,
                format!(
                    "dataset_path {other:?}: chatforge reads local documents (dataset_path: json or parquet, with dataset_kwargs.data_files)"
                ),
            ));
        }
    }
    let files = y
        .dataset_kwargs
        .and_then(|k| k.data_files)
        .ok_or_else(|| bad(path, "dataset_kwargs.data_files names no documents"))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    // A single file is the `train` split, as `datasets` has it.
    let split_files = |split: &str| -> Vec<PathBuf> {
        let list = match &files {
            DataFiles::One(f) if split == "train" => vec![f.clone()],
            DataFiles::One(_) => vec![],
            DataFiles::Split(m) => match m.get(split) {
                Some(OneOrMany::One(f)) => vec![f.clone()],
                Some(OneOrMany::Many(v)) => v.clone(),
                None => vec![],
            },
        };
        list.into_iter().map(|f| dir.join(f)).collect()
    };
    let eval_split = y
        .test_split
        .clone()
        .or(y.validation_split.clone())
        .ok_or_else(|| bad(path, "the task names no test_split or validation_split"))?;
    let text_field = y
        .doc_to_text
        .as_ref()
        .map(field_of)
        .ok_or_else(|| bad(path, "no doc_to_text"))?;
    let fields = Fields {
        text: text_field,
        choice: y
            .doc_to_choice
            .as_ref()
            .map(field_of)
            .ok_or_else(|| bad(path, "no doc_to_choice"))?,
        target: y
            .doc_to_target
            .as_ref()
            .map(field_of)
            .ok_or_else(|| bad(path, "no doc_to_target"))?,
    };
    let read_split = |split: &str| -> Result<Vec<Doc>> {
        let files = split_files(split);
        if files.is_empty() {
            return Err(bad(path, format!("no data_files for split {split:?}")));
        }
        let mut docs = Vec::new();
        for f in files {
            docs.extend(read_docs(&f, &fields)?);
        }
        Ok(docs)
    };
    let docs = read_split(&eval_split)?;
    let fewshot_split = y
        .fewshot_split
        .clone()
        .or(y.training_split.clone())
        .or(y.validation_split.clone());
    let fewshot = match (&opts.fewshot, fewshot_split) {
        (Some(f), _) => read_docs(f, &fields)?,
        (None, Some(s)) if s == eval_split => docs.clone(),
        (None, Some(s)) => read_split(&s)?,
        (None, None) => Vec::new(),
    };
    Ok(Task {
        name: y.task.unwrap_or_else(|| {
            path.file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "task".into())
        }),
        docs,
        fewshot,
        num_fewshot: y.num_fewshot.unwrap_or(0),
        target_delimiter: y.target_delimiter.unwrap_or_else(|| " ".into()),
        fewshot_delimiter: y.fewshot_delimiter.unwrap_or_else(|| "\n\n".into()),
    })
}
