//! The models this node serves: found in the model directories, checked
//! against their manifests, loaded with tract, each behind its own batcher.

use super::{Job, Limits};
use basalt_formats::model::{ModelManifest, MANIFEST_FILE};
use basalt_infer::{LoadOptions, Model};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use tokio::sync::mpsc;

/// Where a model stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum State {
    Loading,
    Ready { load_ms: u64 },
    Failed { error: String },
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            State::Loading => f.write_str("loading"),
            State::Ready { load_ms } => write!(f, "ready (loaded in {load_ms} ms)"),
            State::Failed { error } => write!(f, "failed: {error}"),
        }
    }
}

/// One model, in any state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub name: String,
    pub version: String,
    pub dir: PathBuf,
    pub batch_max: u32,
    #[serde(flatten)]
    pub state: State,
}

impl Status {
    /// A model whose manifest has not been read (yet, or at all).
    fn unread(name: &str, dir: PathBuf, state: State) -> Status {
        Status {
            name: name.to_string(),
            version: String::new(),
            dir,
            batch_max: 1,
            state,
        }
    }
}

/// A loaded model and the queue in front of it.
#[derive(Debug, Clone)]
pub struct Served {
    pub model: Arc<Model>,
    pub queue: mpsc::Sender<Job>,
    /// What its runs have cost so far.
    pub cost: Arc<super::batcher::Cost>,
}

#[derive(Debug, Default)]
struct Inner {
    status: BTreeMap<String, Status>,
    served: BTreeMap<String, Served>,
}

/// Every model of this node.
#[derive(Debug, Default, Clone)]
pub struct Registry {
    inner: Arc<RwLock<Inner>>,
    /// Where the state is written for `basalt-agent info` (none in tests).
    status_file: Option<PathBuf>,
}

/// A model directory's manifest, checked against the directory and file.
pub fn read_manifest(dir: &Path) -> Result<(ModelManifest, PathBuf), String> {
    let path = dir.join(MANIFEST_FILE);
    let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let m = ModelManifest::parse(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    let dir_name = dir.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if m.name.to_string() != dir_name {
        return Err(format!(
            "{}: name {:?} does not match its directory {dir_name:?}",
            path.display(),
            m.name.to_string()
        ));
    }
    Ok((m.clone(), dir.join(&m.file)))
}

/// The model directories under each of `roots` (later roots win on a name
/// clash: data-partition models replace image ones).
pub fn discover(roots: &[&Path]) -> BTreeMap<String, PathBuf> {
    let mut found = BTreeMap::new();
    for root in roots {
        let Ok(rd) = std::fs::read_dir(root) else {
            continue;
        };
        let mut dirs: Vec<PathBuf> = rd
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.join(MANIFEST_FILE).is_file())
            .collect();
        dirs.sort();
        for d in dirs {
            if let Some(name) = d.file_name().and_then(|n| n.to_str()) {
                found.insert(name.to_string(), d);
            }
        }
    }
    found
}

impl Registry {
    /// A registry with no models; with a status file, that file is written
    /// at once (an empty list), so a health check can tell "no models" from
    /// "no server".
    pub fn new(status_file: Option<PathBuf>) -> Self {
        let r = Registry {
            inner: Default::default(),
            status_file,
        };
        r.write_status();
        r
    }

    /// Lists a model as loading before its turn comes, so that readiness and
    /// the boot's health check wait for it.
    pub fn pending(&self, name: &str, dir: PathBuf) {
        if self.status(name).is_none() {
            self.set(Status::unread(name, dir, State::Loading), None);
        }
    }

    fn write_status(&self) {
        let Some(path) = &self.status_file else {
            return;
        };
        let list = self.list();
        if let Ok(text) = serde_json::to_vec_pretty(&list) {
            if let Err(e) = crate::provision::atomic_write(path, &text, 0o644) {
                log::warn!("{}: {e}", path.display());
            }
        }
    }

    fn set(&self, status: Status, served: Option<Served>) {
        {
            let mut inner = self.inner.write().expect("registry lock");
            if let Some(s) = served {
                inner.served.insert(status.name.clone(), s);
            }
            inner.status.insert(status.name.clone(), status);
        }
        self.write_status();
    }

    /// Records a model that could not even be put in place (a failed download).
    pub fn fail(&self, name: &str, dir: PathBuf, error: String) {
        self.set(Status::unread(name, dir, State::Failed { error }), None);
    }

    /// Every model and its state, by name.
    pub fn list(&self) -> Vec<Status> {
        self.inner
            .read()
            .expect("registry lock")
            .status
            .values()
            .cloned()
            .collect()
    }

    /// The model if it is ready.
    pub fn get(&self, name: &str) -> Option<Served> {
        self.inner
            .read()
            .expect("registry lock")
            .served
            .get(name)
            .cloned()
    }

    /// Whether `name` is known at all (in any state).
    pub fn status(&self, name: &str) -> Option<Status> {
        self.inner
            .read()
            .expect("registry lock")
            .status
            .get(name)
            .cloned()
    }

    /// Whether every model is ready (none loading, none failed).
    pub fn all_ready(&self) -> bool {
        self.list()
            .iter()
            .all(|s| matches!(s.state, State::Ready { .. }))
    }

    /// Names of the models that are ready.
    pub fn ready_names(&self) -> Vec<String> {
        self.inner
            .read()
            .expect("registry lock")
            .served
            .keys()
            .cloned()
            .collect()
    }

    /// Loads the model in `dir` on a blocking thread and starts its
    /// batcher. Failures are logged and kept in the model's status; they
    /// never affect other models.
    pub async fn load(
        &self,
        dir: PathBuf,
        limits: Arc<Limits>,
        workers: Arc<tokio::sync::Semaphore>,
        metrics: Arc<super::metrics::Metrics>,
    ) {
        let name = dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("?")
            .to_string();
        let (manifest, file) = match read_manifest(&dir) {
            Ok(m) => m,
            Err(error) => {
                log::error!(model = name.as_str(); "model {name}: {error}");
                return self.set(Status::unread(&name, dir, State::Failed { error }), None);
            }
        };
        let status = |state| Status {
            name: name.clone(),
            version: manifest.version.clone(),
            dir: dir.clone(),
            batch_max: manifest.batch_max,
            state,
        };
        self.set(status(State::Loading), None);
        let started = std::time::Instant::now();
        let m2 = manifest.clone();
        let loaded = tokio::task::spawn_blocking(move || -> Result<Model, String> {
            let bytes = std::fs::read(&file).map_err(|e| format!("{}: {e}", file.display()))?;
            let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes));
            if digest != m2.sha256 {
                return Err(format!(
                    "{}: SHA-256 is {digest}, its manifest says {}; the file changed since it was installed",
                    file.display(),
                    m2.sha256
                ));
            }
            drop(bytes);
            Model::load(
                &m2.name.to_string(),
                &m2.version,
                &file,
                &LoadOptions {
                    batch_max: m2.batch_max as usize,
                },
            )
            .map_err(|e| e.to_string())
        })
        .await
        .unwrap_or_else(|e| Err(format!("loading thread failed: {e}")));
        match loaded {
            Ok(model) => {
                let load_ms = started.elapsed().as_millis() as u64;
                log::info!(
                    model = name.as_str(), model_version = manifest.version.as_str(), load_ms = load_ms;
                    "model {name} {} ready in {load_ms} ms",
                    manifest.version
                );
                let model = Arc::new(model);
                let cost = Arc::new(super::batcher::Cost::default());
                let queue =
                    super::batcher::start(model.clone(), limits, workers, metrics, cost.clone());
                self.set(
                    status(State::Ready { load_ms }),
                    Some(Served { model, queue, cost }),
                );
            }
            Err(error) => {
                log::error!(model = name.as_str(); "model {name}: {error}");
                self.set(status(State::Failed { error }), None);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_model_dir(root: &Path, name: &str, json_name: &str) -> PathBuf {
        let d = root.join(name);
        std::fs::create_dir_all(&d).unwrap();
        let m = serde_json::json!({"name": json_name, "version":"1","file":"model.onnx",
            "sha256":"00".repeat(32),"batch_max":1});
        std::fs::write(d.join(MANIFEST_FILE), m.to_string()).unwrap();
        d
    }

    #[test]
    fn data_models_replace_image_models_of_the_same_name() {
        let image = tempfile::tempdir().unwrap();
        let data = tempfile::tempdir().unwrap();
        write_model_dir(image.path(), "a", "a");
        write_model_dir(image.path(), "b", "b");
        let b2 = write_model_dir(data.path(), "b", "b");
        std::fs::create_dir_all(data.path().join("not-a-model")).unwrap();
        let found = discover(&[image.path(), data.path()]);
        assert_eq!(found.keys().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(found["b"], b2);
    }

    #[test]
    fn a_manifest_naming_another_model_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let d = write_model_dir(root.path(), "a", "b");
        let e = read_manifest(&d).unwrap_err();
        assert!(e.contains("does not match its directory"), "{e}");
    }
}
