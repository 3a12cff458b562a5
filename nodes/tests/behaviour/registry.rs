//! The behaviour of a `registry/1` provider, whatever serves it: models, versions,
//! aliases with MLflow's rules, events, locate, search. Run for the built-in registry by
//! `tests/registry.rs` and for the MLflow adapter by `tests/mlflow.rs`.

use std::fmt::Debug;

use serde::de::DeserializeOwned;
use serde::Serialize;

use mlmesh::protocol::registry::{
    self, limits, AliasAssign, AliasDelete, AliasDeleted, AliasSet, Locate, Located, ModelCreate,
    ModelGet, ModelPage, ModelSearch, ModelUpdate, ModelVersion, RegisteredModel, RunId,
    VersionCreate, VersionGet, VersionPage, VersionSearch, VersionStatus, VersionUpdate,
};
use mlmesh::{CallOptions, Code, NodeHandle, Status, Subscription};

use crate::common::{self, within, Backend, Served, WAIT};

pub struct Mesh {
    pub registry: NodeHandle,
    pub client: NodeHandle,
    _served: Served,
}

impl Mesh {
    pub async fn start(backend: Backend) -> Mesh {
        common::init_tracing();
        let mesh = common::unique_mesh();
        let served = backend.registry("registry", &mesh).await;
        let registry = served.node.clone();
        let client = backend.client(&registry, &mesh).await;
        Mesh {
            registry,
            client,
            _served: served,
        }
    }

    async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        topic: &str,
        req: &Req,
    ) -> Result<Resp, Status> {
        call(&self.client, topic, req).await
    }

    async fn register(&self, name: &str, source: &str) -> ModelVersion {
        self.call(registry::VERSION_CREATE, &version(name, source))
            .await
            .expect("version registered")
    }

    async fn alias(&self, name: &str, alias: &str, version: u64) -> Result<AliasSet, Status> {
        let req = AliasAssign {
            name: name.into(),
            alias: alias.into(),
            version,
        };
        self.call(registry::ALIAS_ASSIGN, &req).await
    }

    async fn locate(
        &self,
        name: &str,
        version: Option<u64>,
        alias: Option<&str>,
    ) -> Result<Located, Status> {
        let req = Locate {
            name: name.into(),
            version,
            alias: alias.map(str::to_owned),
        };
        self.call(registry::MODEL_LOCATE, &req).await
    }

    async fn shutdown(self) {
        self.client.shutdown().await;
        self.registry.shutdown().await;
    }
}

pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
    node: &NodeHandle,
    topic: &str,
    req: &Req,
) -> Result<Resp, Status> {
    node.request_with(topic, req, CallOptions::default().deadline(WAIT))
        .await
}

pub fn version(name: &str, source: &str) -> VersionCreate {
    VersionCreate {
        name: name.into(),
        source: source.into(),
        ..VersionCreate::default()
    }
}

/// Asserts the call failed with `code`, naming `field`; returns the status.
#[track_caller]
pub fn refused<T: Debug>(r: Result<T, Status>, code: Code, field: &str) -> Status {
    let s = r.expect_err("the call must fail");
    assert_eq!(
        (s.code, s.field.as_deref()),
        (code, Some(field)),
        "unexpected status: {s}"
    );
    s
}

/// The next event of `sub`, as (topic, event).
pub async fn next(sub: &mut Subscription) -> mlmesh::Event {
    within("the next registry event", WAIT, sub.recv())
        .await
        .expect("subscription open")
}

pub async fn models_are_created_once_read_and_updated(backend: Backend) {
    let m = Mesh::start(backend).await;
    let mut create = ModelCreate {
        name: "fraud".into(),
        description: "card fraud".into(),
        ..ModelCreate::default()
    };
    create.tags.insert("team".into(), "risk".into());
    let made: RegisteredModel = m
        .call(registry::MODEL_CREATE, &create)
        .await
        .expect("created");
    assert_eq!(
        (
            made.name.as_str(),
            made.description.as_str(),
            made.last_version
        ),
        ("fraud", "card fraud", 0)
    );
    assert_eq!(made.tags.get("team").map(String::as_str), Some("risk"));
    assert!(made.aliases.is_empty() && made.created_ms > 0 && made.updated_ms == made.created_ms);

    let got: RegisteredModel = m
        .call(
            registry::MODEL_GET,
            &ModelGet {
                name: "fraud".into(),
            },
        )
        .await
        .expect("got");
    assert_eq!(got, made);

    let dup = m
        .call::<_, RegisteredModel>(registry::MODEL_CREATE, &create)
        .await;
    refused(dup, Code::AlreadyExists, "name");
    let missing = m
        .call::<_, RegisteredModel>(
            registry::MODEL_GET,
            &ModelGet {
                name: "nope".into(),
            },
        )
        .await;
    refused(missing, Code::NotFound, "name");
    for bad in ["", "a/b", "models:x", "a@b"] {
        let r = m
            .call::<_, RegisteredModel>(
                registry::MODEL_CREATE,
                &ModelCreate {
                    name: bad.into(),
                    ..ModelCreate::default()
                },
            )
            .await;
        refused(r, Code::InvalidArgument, "name");
    }
    create.name = "x".into();
    create.tags.insert("bad:key".into(), "v".into());
    let r = m
        .call::<_, RegisteredModel>(registry::MODEL_CREATE, &create)
        .await;
    refused(r, Code::InvalidArgument, "tags.bad:key");

    let mut update = ModelUpdate {
        name: "fraud".into(),
        description: Some("card and wire fraud".into()),
        delete_tags: vec!["team".into()],
        ..ModelUpdate::default()
    };
    update.set_tags.insert("owner".into(), "ana".into());
    let updated: RegisteredModel = m
        .call(registry::MODEL_UPDATE, &update)
        .await
        .expect("updated");
    assert_eq!(updated.description, "card and wire fraud");
    assert_eq!(
        updated.tags.into_iter().collect::<Vec<_>>(),
        [("owner".to_owned(), "ana".to_owned())]
    );
    assert!(updated.updated_ms >= made.updated_ms);
    update.name = "nope".into();
    let r = m
        .call::<_, RegisteredModel>(registry::MODEL_UPDATE, &update)
        .await;
    refused(r, Code::NotFound, "name");
    m.shutdown().await;
}

pub async fn versions_count_up_create_the_model_and_never_repeat(backend: Backend) {
    let m = Mesh::start(backend).await;
    let run = RunId::new();
    let mut first = version("churn", "s3://models/churn/1");
    first.run_id = Some(run);
    first.description = "baseline".into();
    first.tags.insert("framework".into(), "xgboost".into());
    let v1: ModelVersion = m
        .call(registry::VERSION_CREATE, &first)
        .await
        .expect("registered");
    assert_eq!(
        (v1.name.as_str(), v1.version, v1.status, v1.run_id),
        ("churn", 1, VersionStatus::Ready, Some(run))
    );
    assert_eq!(
        (v1.source.as_str(), v1.description.as_str()),
        ("s3://models/churn/1", "baseline")
    );
    assert_eq!(
        v1.tags.get("framework").map(String::as_str),
        Some("xgboost")
    );
    // Registering made the model, as mlflow.register_model does.
    let model: RegisteredModel = m
        .call(
            registry::MODEL_GET,
            &ModelGet {
                name: "churn".into(),
            },
        )
        .await
        .expect("the model exists");
    assert_eq!(model.last_version, 1);

    // Concurrent registrations get distinct, consecutive numbers.
    let sources: Vec<String> = (0..20).map(|i| format!("s3://models/churn/c{i}")).collect();
    let calls = sources.iter().map(|s| m.register("churn", s));
    let mut numbers: Vec<u64> = futures::future::join_all(calls)
        .await
        .into_iter()
        .map(|v| v.version)
        .collect();
    numbers.sort_unstable();
    assert_eq!(numbers, (2..=21).collect::<Vec<u64>>());

    let got: ModelVersion = m
        .call(
            registry::VERSION_GET,
            &VersionGet {
                name: "churn".into(),
                version: 1,
            },
        )
        .await
        .expect("got");
    assert_eq!(got, v1);
    let r = m
        .call::<_, ModelVersion>(
            registry::VERSION_GET,
            &VersionGet {
                name: "churn".into(),
                version: 99,
            },
        )
        .await;
    refused(r, Code::NotFound, "version");
    let r = m
        .call::<_, ModelVersion>(
            registry::VERSION_GET,
            &VersionGet {
                name: "nope".into(),
                version: 1,
            },
        )
        .await;
    refused(r, Code::NotFound, "name");
    let r = m
        .call::<_, ModelVersion>(registry::VERSION_CREATE, &version("churn", " "))
        .await;
    refused(r, Code::InvalidArgument, "source");
    // Payloads that do not fit the schema name the field.
    #[derive(Serialize)]
    struct Raw<'a> {
        name: &'a str,
        source: &'a str,
        run_id: &'a str,
        status: &'a str,
    }
    let mut raw = Raw {
        name: "churn",
        source: "s3://x",
        run_id: "not-a-run",
        status: "READY",
    };
    let r = m
        .call::<_, ModelVersion>(registry::VERSION_CREATE, &raw)
        .await;
    refused(r, Code::InvalidArgument, "run_id");
    raw.run_id = "0123456789abcdef0123456789abcdef";
    raw.status = "DONE";
    let r = m
        .call::<_, ModelVersion>(registry::VERSION_CREATE, &raw)
        .await;
    refused(r, Code::InvalidArgument, "status");
    // A request that fails takes no number.
    assert_eq!(
        m.register("churn", "s3://models/churn/22").await.version,
        22
    );

    let mut update = VersionUpdate {
        name: "churn".into(),
        version: 22,
        status: Some(VersionStatus::FailedRegistration),
        status_message: Some("upload failed".into()),
        delete_tags: vec!["nothing".into()],
        ..VersionUpdate::default()
    };
    update.set_tags.insert("checked".into(), "no".into());
    let v22: ModelVersion = m
        .call(registry::VERSION_UPDATE, &update)
        .await
        .expect("updated");
    assert_eq!(
        (v22.status, v22.status_message.as_str()),
        (VersionStatus::FailedRegistration, "upload failed")
    );
    assert_eq!(v22.tags.get("checked").map(String::as_str), Some("no"));
    update.version = 23;
    let r = m
        .call::<_, ModelVersion>(registry::VERSION_UPDATE, &update)
        .await;
    refused(r, Code::NotFound, "version");
    m.shutdown().await;
}

pub async fn aliases_follow_mlflow_rules(backend: Backend) {
    let m = Mesh::start(backend).await;
    m.register("fraud", "s3://f/1").await;
    let long_ok = "a".repeat(255);
    for ok in [
        "champion",
        "Champ_1-b",
        "v",
        "vNext",
        "latest_2",
        long_ok.as_str(),
    ] {
        let set = m.alias("fraud", ok, 1).await.expect(ok);
        assert_eq!((set.alias.as_str(), set.version), (ok, 1));
    }
    let too_long = "a".repeat(256);
    for bad in [
        "latest",
        "LATEST",
        "Latest",
        "v1",
        "V12",
        "",
        "a b",
        "a.b",
        "a/b",
        "ünï",
        too_long.as_str(),
    ] {
        let s = refused(
            m.alias("fraud", bad, 1).await,
            Code::InvalidArgument,
            "alias",
        );
        assert!(!s.message.is_empty(), "{bad:?}");
    }
    refused(
        m.alias("fraud", "champion", 2).await,
        Code::NotFound,
        "version",
    );
    refused(m.alias("nope", "champion", 1).await, Code::NotFound, "name");
    refused(
        m.alias("fraud", "champion", 0).await,
        Code::InvalidArgument,
        "version",
    );

    let model: RegisteredModel = m
        .call(
            registry::MODEL_GET,
            &ModelGet {
                name: "fraud".into(),
            },
        )
        .await
        .expect("got");
    assert_eq!(model.aliases.get("champion"), Some(&1));
    assert_eq!(model.aliases.len(), 6);
    let v1: ModelVersion = m
        .call(
            registry::VERSION_GET,
            &VersionGet {
                name: "fraud".into(),
                version: 1,
            },
        )
        .await
        .expect("got");
    assert!(v1.aliases.contains(&"champion".to_owned()), "{v1:?}");
    m.shutdown().await;
}

pub async fn every_change_is_an_event_and_aliases_say_where_they_moved_from(backend: Backend) {
    let m = Mesh::start(backend).await;
    let mut events = m.client.subscribe("registry.**").expect("pattern");
    let mut probe = m.client.subscribe("probe.**").expect("pattern");
    // The probe subscription is sent after the one under test, on the same connection:
    // once probes arrive, both are in place at the publisher.
    common::sync_events(&m.registry, &mut probe, "probe.sync").await;

    m.register("fraud", "s3://f/1").await;
    m.register("fraud", "s3://f/2").await;
    let ev = next(&mut events).await;
    assert_eq!(ev.topic().as_str(), registry::MODEL_CREATED);
    assert_eq!(
        ev.decode::<RegisteredModel>().expect("payload").name,
        "fraud"
    );
    for n in [1, 2] {
        let ev = next(&mut events).await;
        assert_eq!(ev.topic().as_str(), registry::VERSION_CREATED);
        let v: ModelVersion = ev.decode().expect("payload");
        assert_eq!((v.version, v.source), (n, format!("s3://f/{n}")));
    }

    let first = m.alias("fraud", "champion", 1).await.expect("set");
    assert_eq!(first.previous, None);
    let ev = next(&mut events).await;
    assert_eq!(ev.topic().as_str(), registry::ALIAS_SET);
    assert_eq!(ev.decode::<AliasSet>().expect("payload"), first);

    // Setting it where it already is changes nothing and says nothing.
    assert_eq!(
        m.alias("fraud", "champion", 1).await.expect("set").previous,
        None
    );
    let moved = m.alias("fraud", "champion", 2).await.expect("moved");
    assert_eq!((moved.version, moved.previous), (2, Some(1)));
    let ev = next(&mut events).await;
    assert_eq!(ev.topic().as_str(), registry::ALIAS_SET);
    let got: AliasSet = ev.decode().expect("payload");
    assert_eq!(
        (
            got.name.as_str(),
            got.alias.as_str(),
            got.version,
            got.previous
        ),
        ("fraud", "champion", 2, Some(1))
    );

    let update = VersionUpdate {
        name: "fraud".into(),
        version: 2,
        description: Some("promoted".into()),
        ..VersionUpdate::default()
    };
    m.call::<_, ModelVersion>(registry::VERSION_UPDATE, &update)
        .await
        .expect("updated");
    let ev = next(&mut events).await;
    assert_eq!(ev.topic().as_str(), registry::VERSION_UPDATED);
    let v: ModelVersion = ev.decode().expect("payload");
    assert_eq!(
        (v.description.as_str(), v.aliases),
        ("promoted", vec!["champion".to_owned()])
    );

    let update = ModelUpdate {
        name: "fraud".into(),
        description: Some("d".into()),
        ..ModelUpdate::default()
    };
    m.call::<_, RegisteredModel>(registry::MODEL_UPDATE, &update)
        .await
        .expect("updated");
    let ev = next(&mut events).await;
    assert_eq!(ev.topic().as_str(), registry::MODEL_UPDATED);
    assert_eq!(
        ev.decode::<RegisteredModel>()
            .expect("payload")
            .aliases
            .get("champion"),
        Some(&2)
    );

    let del = AliasDelete {
        name: "fraud".into(),
        alias: "champion".into(),
    };
    let deleted: AliasDeleted = m.call(registry::ALIAS_DELETE, &del).await.expect("deleted");
    assert_eq!(deleted.version, 2);
    let ev = next(&mut events).await;
    assert_eq!(ev.topic().as_str(), registry::ALIAS_DELETED);
    assert_eq!(ev.decode::<AliasDeleted>().expect("payload"), deleted);
    refused(
        m.call::<_, AliasDeleted>(registry::ALIAS_DELETE, &del)
            .await,
        Code::NotFound,
        "alias",
    );
    // Failed instructions publish nothing.
    assert!(events.try_recv().is_none());
    assert_eq!(events.dropped(), 0);
    m.shutdown().await;
}

pub async fn locate_answers_by_version_alias_or_latest(backend: Backend) {
    let m = Mesh::start(backend).await;
    let run = RunId::new();
    let mut v1 = version("fraud", "s3://f/1");
    v1.run_id = Some(run);
    m.call::<_, ModelVersion>(registry::VERSION_CREATE, &v1)
        .await
        .expect("registered");
    m.register("fraud", "s3://f/2").await;
    let mut pending = version("fraud", "s3://f/3");
    pending.status = Some(VersionStatus::PendingRegistration);
    m.call::<_, ModelVersion>(registry::VERSION_CREATE, &pending)
        .await
        .expect("registered");
    m.alias("fraud", "champion", 1).await.expect("alias set");

    let by_version = m.locate("fraud", Some(1), None).await.expect("by version");
    assert_eq!(
        by_version,
        Located {
            name: "fraud".into(),
            version: 1,
            source: "s3://f/1".into(),
            run_id: Some(run),
            status: VersionStatus::Ready,
            alias: None,
        }
    );
    let by_alias = m
        .locate("fraud", None, Some("champion"))
        .await
        .expect("by alias");
    assert_eq!(
        (
            by_alias.version,
            by_alias.source.as_str(),
            by_alias.alias.as_deref()
        ),
        (1, "s3://f/1", Some("champion"))
    );
    // The latest READY version: 3 is still being uploaded.
    let latest = m.locate("fraud", None, None).await.expect("latest");
    assert_eq!((latest.version, latest.source.as_str()), (2, "s3://f/2"));
    for word in ["latest", "LATEST"] {
        let l = m.locate("fraud", None, Some(word)).await.expect("latest");
        assert_eq!((l.version, l.alias.as_deref()), (2, Some(word)));
    }
    let update = VersionUpdate {
        name: "fraud".into(),
        version: 3,
        status: Some(VersionStatus::Ready),
        ..VersionUpdate::default()
    };
    m.call::<_, ModelVersion>(registry::VERSION_UPDATE, &update)
        .await
        .expect("ready");
    assert_eq!(
        m.locate("fraud", None, None).await.expect("latest").version,
        3
    );
    // By number, whatever its status.
    let p = m.locate("fraud", Some(3), None).await.expect("by version");
    assert_eq!(p.status, VersionStatus::Ready);

    refused(
        m.locate("fraud", None, Some("nobody")).await,
        Code::NotFound,
        "alias",
    );
    refused(
        m.locate("fraud", Some(9), None).await,
        Code::NotFound,
        "version",
    );
    refused(m.locate("nope", None, None).await, Code::NotFound, "name");
    refused(
        m.locate("fraud", Some(1), Some("champion")).await,
        Code::InvalidArgument,
        "alias",
    );
    refused(
        m.locate("fraud", None, Some("v1")).await,
        Code::InvalidArgument,
        "alias",
    );
    let mut only_pending = version("new", "s3://n/1");
    only_pending.status = Some(VersionStatus::PendingRegistration);
    m.call::<_, ModelVersion>(registry::VERSION_CREATE, &only_pending)
        .await
        .expect("registered");
    refused(m.locate("new", None, None).await, Code::NotFound, "version");
    m.shutdown().await;
}

pub async fn search_filters_orders_and_pages(backend: Backend) {
    let m = Mesh::start(backend).await;
    let run = RunId::new();
    for (name, team) in [("fraud", "risk"), ("Fraud-eu", "risk"), ("churn", "growth")] {
        let mut create = ModelCreate {
            name: name.into(),
            ..ModelCreate::default()
        };
        create.tags.insert("team".into(), team.into());
        m.call::<_, RegisteredModel>(registry::MODEL_CREATE, &create)
            .await
            .expect("created");
    }
    for i in 1..=3 {
        let mut v = version("fraud", &format!("s3://f/{i}"));
        if i == 2 {
            v.run_id = Some(run);
            v.tags.insert("stage".into(), "canary".into());
        }
        m.call::<_, ModelVersion>(registry::VERSION_CREATE, &v)
            .await
            .expect("registered");
    }
    m.register("churn", "gs://c/1").await;

    let models = |filter: &str, order: &[&str]| ModelSearch {
        filter: filter.into(),
        order_by: order.iter().map(|s| s.to_string()).collect(),
        ..ModelSearch::default()
    };
    let names =
        |page: ModelPage| -> Vec<String> { page.models.into_iter().map(|m| m.name).collect() };
    let all: ModelPage = m
        .call(registry::MODEL_SEARCH, &models("", &[]))
        .await
        .expect("search");
    assert_eq!(names(all), ["Fraud-eu", "churn", "fraud"]);
    let like: ModelPage = m
        .call(registry::MODEL_SEARCH, &models("name LIKE 'fraud%'", &[]))
        .await
        .expect("search");
    assert_eq!(names(like), ["fraud"]);
    let ilike: ModelPage = m
        .call(
            registry::MODEL_SEARCH,
            &models("name ILIKE 'fraud%' AND tags.team = 'risk'", &["name DESC"]),
        )
        .await
        .expect("search");
    assert_eq!(names(ilike), ["fraud", "Fraud-eu"]);
    let by_tag: ModelPage = m
        .call(registry::MODEL_SEARCH, &models("tags.team != 'risk'", &[]))
        .await
        .expect("search");
    assert_eq!(names(by_tag), ["churn"]);

    // Pages of one, in order, then none.
    let mut req = models("", &["created ASC"]);
    req.max_results = 1;
    let mut seen = Vec::new();
    for _ in 0..4 {
        let page: ModelPage = m.call(registry::MODEL_SEARCH, &req).await.expect("page");
        seen.extend(names(page.clone()));
        req.page_token = page.next_page_token;
        if req.page_token.is_none() {
            break;
        }
    }
    // Models created in the same millisecond tie on `created`; the tiebreak (name) makes
    // the order total, so pages of one are the single page, cut.
    let whole: ModelPage = m
        .call(registry::MODEL_SEARCH, &models("", &["created ASC"]))
        .await
        .expect("search");
    assert_eq!(seen, names(whole));
    assert_eq!(seen.len(), 3);
    assert!(req.page_token.is_none());
    req.max_results = 1001;
    refused(
        m.call::<_, ModelPage>(registry::MODEL_SEARCH, &req).await,
        Code::InvalidArgument,
        "max_results",
    );

    let versions = |filter: &str| VersionSearch {
        filter: filter.into(),
        ..VersionSearch::default()
    };
    let found = |page: VersionPage| -> Vec<String> {
        page.versions
            .into_iter()
            .map(|v| format!("{}/{}", v.name, v.version))
            .collect()
    };
    let by_run = format!("run_id = '{run}'");
    for (filter, want) in [
        ("", &["churn/1", "fraud/3", "fraud/2", "fraud/1"][..]),
        (
            "name = 'fraud' AND version_number > 1",
            &["fraud/3", "fraud/2"],
        ),
        (by_run.as_str(), &["fraud/2"]),
        ("tags.stage = 'canary'", &["fraud/2"]),
        ("source LIKE 'gs://%'", &["churn/1"]),
        (
            "status = 'READY' AND version_number <= 1",
            &["churn/1", "fraud/1"],
        ),
    ] {
        let page: VersionPage = m
            .call(registry::VERSION_SEARCH, &versions(filter))
            .await
            .expect(filter);
        assert_eq!(found(page), want, "{filter}");
    }

    // A malformed filter says where it goes wrong.
    let s = refused(
        m.call::<_, VersionPage>(
            registry::VERSION_SEARCH,
            &versions("name = 'fraud' AND version_number >"),
        )
        .await,
        Code::InvalidArgument,
        "filter",
    );
    assert!(s.message.contains("position 35"), "{s}");
    let s = refused(
        m.call::<_, ModelPage>(
            registry::MODEL_SEARCH,
            &models("name = 'a' OR name = 'b'", &[]),
        )
        .await,
        Code::InvalidArgument,
        "filter",
    );
    assert!(s.message.contains("position 11"), "{s}");
    let s = refused(
        m.call::<_, ModelPage>(registry::MODEL_SEARCH, &models("metrics.auc > 0.9", &[]))
            .await,
        Code::InvalidArgument,
        "filter",
    );
    assert!(s.message.contains("position 0"), "{s}");
    refused(
        m.call::<_, ModelPage>(registry::MODEL_SEARCH, &models("", &["auc DESC"]))
            .await,
        Code::InvalidArgument,
        "order_by[0]",
    );
    m.shutdown().await;
}

/// Models with long descriptions make pages larger than a message may be: a search cuts
/// its pages by size, whatever `max_results` says, and the token carries on without
/// losing or repeating a model.
pub async fn model_search_pages_are_cut_to_the_message_size_limit(backend: Backend) {
    let m = Mesh::start(backend).await;
    let n = 250; // 250 x 5,000 bytes of description: 1.25 MB
    for i in 0..n {
        let req = ModelCreate {
            name: format!("large-{i:03}"),
            description: "d".repeat(limits::MAX_DESCRIPTION_LENGTH),
            ..ModelCreate::default()
        };
        let _: RegisteredModel = call(&m.client, registry::MODEL_CREATE, &req).await.unwrap();
    }
    let mut req = ModelSearch {
        max_results: limits::MAX_RESULTS,
        ..ModelSearch::default()
    };
    let (mut seen, mut pages) = (std::collections::BTreeSet::new(), 0);
    loop {
        let page: ModelPage = call(&m.client, registry::MODEL_SEARCH, &req).await.unwrap();
        pages += 1;
        assert!(
            !page.models.is_empty() && page.models.len() < n,
            "{}",
            page.models.len()
        );
        for model in page.models {
            assert!(seen.insert(model.name.clone()), "{} twice", model.name);
        }
        match page.next_page_token {
            Some(token) => req.page_token = Some(token),
            None => break,
        }
        assert!(pages <= n, "more pages than models");
    }
    assert_eq!(seen.len(), n);
}
