//! The bundled presets (`configs/*.toml`, compiled in): what `chatforge pipeline` trains by
//! default, and the starting points `GET /presets` offers for a run from scratch (the studio's
//! New run form).

/// Name and TOML text of each preset, smallest first.
pub const PRESETS: &[(&str, &str)] = &[
    ("tiny", include_str!("../../../configs/tiny.toml")),
    ("small", include_str!("../../../configs/small.toml")),
    ("llama-small", include_str!("../../../configs/llama-small.toml")),
];

/// The TOML text of preset `name`.
pub fn preset(name: &str) -> Option<&'static str> {
    PRESETS.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
}

/// A preset's sections as JSON (`{"model": {…}, "train": {…}}`), only the keys the file sets: a
/// request carrying them gets the rest from the same defaults as `chatforge train`.
pub fn as_json(text: &str) -> crate::Result<serde_json::Value> {
    let v: toml::Value = toml::from_str(text).map_err(|e| crate::Error::Invalid(format!("a preset: {e}")))?;
    serde_json::to_value(v).map_err(|e| crate::Error::Invalid(format!("a preset: {e}")))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn every_preset_is_a_valid_config() {
        for (name, text) in PRESETS {
            let mut cfg: chatforge_train::TrainConfig = toml::from_str(text).unwrap();
            // `vocab_size = 0` takes the tokenizer's size.
            cfg.model.vocab_size = 512;
            cfg.model.validate().unwrap_or_else(|e| panic!("{name}: {e}"));
            let v = as_json(text).unwrap();
            assert!(v["model"]["n_layer"].as_u64().unwrap() >= 1, "{name}");
        }
        assert!(preset("small").is_some() && preset("huge").is_none());
    }
}
