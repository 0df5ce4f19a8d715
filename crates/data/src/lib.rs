//! Conversations in, token shards out.
//!
//! Reading people's conversation data in the formats they already have ([`read_file`], [`import`]),
//! the canonical [`Conversation`] they become, statistics, the memory-mapped token [`Shard`] and the
//! seeded, document-aware [`BatchSampler`] that feeds training.

mod chat_export;
mod conversation;
mod error;
mod formats;
mod import;
mod io;
pub mod personas;
mod sampler;
mod shard;
mod stats;

pub use chat_export::{
    ANONYMOUS, ANONYMOUS_ID, ChatExportOptions, ChatExportReport, Consent, MentionMode, Rule, RuleCount,
    UrlMode, parse_timestamp, read_chat_export,
};
pub use chatforge_base::Rng;
pub use conversation::{Conversation, Message, Role, domain_tag};
pub use error::{Error, Pos, Result};
pub use formats::{Container, DataFormat, Detected, FieldMap, FileRead, ReadOptions, read_file, read_rows};
pub use import::{
    FileReport, IMPORT_REPORT_SUFFIX, ImportOptions, ImportReport, SPLIT_SEED, VAL_SPLIT, collect_inputs,
    import, import_report_path, split, val_path_for,
};
pub use io::{
    ContentHash, atomic_dir, atomic_write, clear_leftovers, parse_jsonl_line, read_capped, read_jsonl,
    sha256_file, write_jsonl,
};
pub use sampler::{Batch, BatchSampler, SamplerConfig, SamplerState};
pub use shard::{IdWidth, Shard, ShardHeader, ShardWriter};
pub use stats::{Counted, Stats};
