//! The behavioural suites of `tracking/1` and `registry/1`: every test is a function of
//! the [`Backend`](crate::common::Backend) that serves the family, and a test binary
//! runs a suite on a backend with [`tracking_tests!`] or [`registry_tests!`] (one
//! `#[tokio::test]` per behaviour, named as the behaviour).
#![allow(
    dead_code,
    unreachable_pub,
    missing_docs,
    unused_macros,
    clippy::unwrap_used
)]

pub mod registry;
pub mod tracking;

/// One `#[tokio::test]` per named behaviour of `$suite`, on `$backend`.
macro_rules! behaviour_tests {
    ($backend:expr, $suite:ident: $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                behaviour::$suite::$name($backend).await
            }
        )*
    };
}

/// The `tracking/1` suite on `$backend`.
macro_rules! tracking_tests {
    ($backend:expr) => {
        behaviour_tests!(
            $backend,
            tracking: runs_params_metrics_tags_follow_mlflow_semantics,
            every_limit_is_invalid_argument_naming_the_item,
            a_retried_request_gets_the_original_reply_and_writes_nothing_twice,
            events_report_every_change,
            a_run_whose_owner_leaves_the_mesh_becomes_crashed,
            search_filters_orders_and_pages_like_mlflow,
            eight_writer_nodes_at_once_lose_nothing,
            a_long_history_comes_back_in_pages_that_fit,
            run_search_pages_are_cut_to_the_message_size_limit,
        );
    };
}

/// The `registry/1` suite on `$backend`.
macro_rules! registry_tests {
    ($backend:expr) => {
        behaviour_tests!(
            $backend,
            registry: models_are_created_once_read_and_updated,
            versions_count_up_create_the_model_and_never_repeat,
            aliases_follow_mlflow_rules,
            every_change_is_an_event_and_aliases_say_where_they_moved_from,
            locate_answers_by_version_alias_or_latest,
            search_filters_orders_and_pages,
            model_search_pages_are_cut_to_the_message_size_limit,
        );
    };
}
