//! MLflow's REST JSON, as far as the adapter reads and writes it.
//!
//! Two quirks of MLflow 3 shape the metric value: a bare `NaN` or `Infinity` token in a
//! request is taken as 0.0, so non-finite values are sent as the strings `"NaN"`,
//! `"Infinity"` and `"-Infinity"`; and MLflow's SQL store keeps ±infinity as
//! ±1.7976931348623157e308, so that value is read back as ±infinity.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A key and a value: MLflow's params and tags.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Kv {
    pub(crate) key: String,
    #[serde(default)]
    pub(crate) value: String,
}

/// Pairs of a map, as MLflow's lists.
pub(crate) fn kvs<'a>(pairs: impl IntoIterator<Item = (&'a String, &'a String)>) -> Vec<Kv> {
    pairs
        .into_iter()
        .map(|(k, v)| Kv {
            key: k.clone(),
            value: v.clone(),
        })
        .collect()
}

/// A metric value on MLflow's wire.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Value(pub(crate) f64);

impl Serialize for Value {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let v = self.0;
        if v.is_nan() {
            s.serialize_str("NaN")
        } else if v == f64::INFINITY {
            s.serialize_str("Infinity")
        } else if v == f64::NEG_INFINITY {
            s.serialize_str("-Infinity")
        } else {
            s.serialize_f64(v)
        }
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(f64),
            Text(String),
        }
        let v = match Raw::deserialize(d)? {
            Raw::Number(v) => v,
            Raw::Text(t) => match t.as_str() {
                "NaN" | "nan" => f64::NAN,
                "Infinity" | "inf" => f64::INFINITY,
                "-Infinity" | "-inf" => f64::NEG_INFINITY,
                other => other
                    .parse()
                    .map_err(|_| serde::de::Error::custom(format!("metric value {other:?}")))?,
            },
        };
        Ok(Value(if v == f64::MAX {
            f64::INFINITY
        } else if v == f64::MIN {
            f64::NEG_INFINITY
        } else {
            v
        }))
    }
}

/// A metric value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Metric {
    pub(crate) key: String,
    pub(crate) value: Value,
    #[serde(default)]
    pub(crate) timestamp: u64,
    #[serde(default)]
    pub(crate) step: i64,
}

/// An experiment.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub(crate) struct Experiment {
    pub(crate) experiment_id: String,
    pub(crate) name: String,
    pub(crate) artifact_location: String,
    pub(crate) creation_time: Option<u64>,
    pub(crate) tags: Vec<Kv>,
}

/// A run's info.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub(crate) struct RunInfo {
    pub(crate) run_id: String,
    pub(crate) experiment_id: String,
    pub(crate) run_name: String,
    pub(crate) status: String,
    pub(crate) start_time: Option<u64>,
    pub(crate) end_time: Option<u64>,
    pub(crate) artifact_uri: String,
}

/// A run's data: latest metric values, params, tags.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub(crate) struct RunData {
    pub(crate) metrics: Vec<Metric>,
    pub(crate) params: Vec<Kv>,
    pub(crate) tags: Vec<Kv>,
}

/// A dataset.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub(crate) struct Dataset {
    pub(crate) name: String,
    pub(crate) digest: String,
    pub(crate) source_type: String,
    pub(crate) source: String,
}

/// A dataset input of a run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub(crate) struct DatasetInput {
    pub(crate) tags: Vec<Kv>,
    pub(crate) dataset: Dataset,
}

/// A run's inputs.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub(crate) struct RunInputs {
    pub(crate) dataset_inputs: Vec<DatasetInput>,
}

/// A run.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub(crate) struct Run {
    pub(crate) info: RunInfo,
    pub(crate) data: RunData,
    pub(crate) inputs: RunInputs,
}

/// `{"run": ...}`.
#[derive(Debug, Deserialize)]
pub(crate) struct RunReply {
    pub(crate) run: Run,
}

/// `{"experiment": ...}`.
#[derive(Debug, Deserialize)]
pub(crate) struct ExperimentReply {
    pub(crate) experiment: Experiment,
}

/// A registered model's alias.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub(crate) struct Alias {
    pub(crate) alias: String,
    pub(crate) version: String,
}

/// A model version.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub(crate) struct ModelVersion {
    pub(crate) name: String,
    pub(crate) version: String,
    pub(crate) creation_timestamp: u64,
    pub(crate) last_updated_timestamp: u64,
    pub(crate) description: String,
    pub(crate) source: String,
    pub(crate) run_id: String,
    pub(crate) status: String,
    pub(crate) status_message: String,
    pub(crate) tags: Vec<Kv>,
    pub(crate) aliases: Vec<String>,
}

/// A registered model.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub(crate) struct RegisteredModel {
    pub(crate) name: String,
    pub(crate) creation_timestamp: u64,
    pub(crate) last_updated_timestamp: u64,
    pub(crate) description: String,
    pub(crate) latest_versions: Vec<ModelVersion>,
    pub(crate) tags: Vec<Kv>,
    pub(crate) aliases: Vec<Alias>,
}

/// `{"registered_model": ...}`.
#[derive(Debug, Deserialize)]
pub(crate) struct ModelReply {
    pub(crate) registered_model: RegisteredModel,
}

/// `{"model_version": ...}`.
#[derive(Debug, Deserialize)]
pub(crate) struct VersionReply {
    pub(crate) model_version: ModelVersion,
}

/// A page of `registered-models/search`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct ModelPage {
    pub(crate) registered_models: Vec<RegisteredModel>,
    pub(crate) next_page_token: Option<String>,
}

/// A page of `model-versions/search`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct VersionPage {
    pub(crate) model_versions: Vec<ModelVersion>,
    pub(crate) next_page_token: Option<String>,
}

/// A page of `runs/search`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct RunPage {
    pub(crate) runs: Vec<Run>,
    pub(crate) next_page_token: Option<String>,
}

/// A page of `experiments/search`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct ExperimentPage {
    pub(crate) experiments: Vec<Experiment>,
    pub(crate) next_page_token: Option<String>,
}

/// A page of `metrics/get-history`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct HistoryPage {
    pub(crate) metrics: Vec<Metric>,
    pub(crate) next_page_token: Option<String>,
}

/// A reply whose content does not matter.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct Empty {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_finite_values_go_as_strings_and_max_reads_as_infinity() {
        let m = |v| Metric {
            key: "k".into(),
            value: Value(v),
            timestamp: 1,
            step: 0,
        };
        let text =
            serde_json::to_string(&[m(f64::NAN), m(f64::INFINITY), m(0.5)]).expect("encodes");
        assert!(text.contains(r#""value":"NaN""#), "{text}");
        assert!(text.contains(r#""value":"Infinity""#), "{text}");
        assert!(text.contains(r#""value":0.5"#), "{text}");
        let back: Vec<Metric> = serde_json::from_str(
            r#"[{"key":"k","value":"NaN","timestamp":1,"step":2},
                {"key":"k","value":1.7976931348623157e308,"timestamp":1},
                {"key":"k","value":-1.7976931348623157e308,"timestamp":1}]"#,
        )
        .expect("decodes");
        assert!(back[0].value.0.is_nan());
        assert_eq!(back[1].value.0, f64::INFINITY);
        assert_eq!(back[2].value.0, f64::NEG_INFINITY);
    }
}
