//! `/personas`: the persona registry of the data root (`personas.toml`, as `chatforge personas`
//! keeps it), renamed and switched on and off, and the consent summaries of the chat exports
//! imported into `data/` (`*.import.json`, written by `chatforge data import`).

use axum::Router;
use axum::extract::{Path as UrlPath, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch};
use chatforge_data::IMPORT_REPORT_SUFFIX;
use chatforge_data::personas::Registry;
use serde::Deserialize;
use serde_json::{Value, json};

use super::data::DATA_DIR;
use super::{ApiError, ApiResult, AppState, JsonBody, off_thread};
use crate::Error;
use crate::paths::{inside, scrub};

/// The registry's file in the data root.
pub const REGISTRY_FILE: &str = "personas.toml";

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/personas", get(list_personas))
        .route("/personas/{key}", patch(update_persona))
}

fn invalid_registry(e: chatforge_data::Error, root: &std::path::Path) -> ApiError {
    ApiError::Invalid(scrub(&e.to_string(), root))
}

async fn list_personas(State(st): State<AppState>) -> ApiResult<Response> {
    let root = st.cfg.data_root.clone();
    let (registry, imports) = off_thread(move || {
        let registry =
            Registry::load(&inside(&root, REGISTRY_FILE)?).map_err(|e| invalid_registry(e, &root))?;
        let data = inside(&root, DATA_DIR)?;
        let mut imports = Vec::new();
        let mut entries: Vec<_> = std::fs::read_dir(&data).into_iter().flatten().flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries.iter().take(1000) {
            let name = e.file_name().to_string_lossy().to_string();
            let Some(output) = name.strip_suffix(IMPORT_REPORT_SUFFIX) else {
                continue;
            };
            let report: Option<Value> = chatforge_data::read_capped(&e.path(), 1 << 20)
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok());
            if let Some(mut r) = report {
                r["output"] = json!(format!("{DATA_DIR}/{output}"));
                imports.push(r);
            }
        }
        Ok((registry, imports))
    })
    .await?;
    Ok(axum::Json(json!({"personas": registry.personas, "imports": imports})).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PersonaUpdate {
    name: Option<String>,
    enabled: Option<bool>,
}

/// Renames a persona or switches it on or off, by user id or current name.
async fn update_persona(
    State(st): State<AppState>,
    UrlPath(key): UrlPath<String>,
    JsonBody(req): JsonBody<PersonaUpdate>,
) -> ApiResult<Response> {
    if req.name.is_none() && req.enabled.is_none() {
        return Err(ApiError::Invalid("give name or enabled".into()));
    }
    let root = st.cfg.data_root.clone();
    let persona = off_thread(move || {
        let path = inside(&root, REGISTRY_FILE)?;
        let mut reg = Registry::load(&path).map_err(|e| invalid_registry(e, &root))?;
        if reg.find_mut(&key).is_none() {
            return Err(ApiError::NotFound(format!("no persona {key:?}")));
        }
        if let Some(name) = &req.name {
            reg.rename(&key, name).map_err(|e| invalid_registry(e, &root))?;
        }
        let key = req.name.as_deref().unwrap_or(&key);
        if let Some(on) = req.enabled {
            reg.set_enabled(key, on).map_err(|e| invalid_registry(e, &root))?;
        }
        reg.save(&path).map_err(|e| {
            ApiError::from(Error::Io {
                path: path.clone(),
                source: std::io::Error::other(e.to_string()),
            })
        })?;
        reg.find_mut(key)
            .map(|p| json!(p))
            .ok_or_else(|| ApiError::NotFound(format!("no persona {key:?}")))
    })
    .await?;
    Ok(axum::Json(persona).into_response())
}
