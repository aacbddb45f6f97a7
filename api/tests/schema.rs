//! The SDL in `docs/schema.graphql` is generated from the schema; this test
//! fails when it is stale.

const PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/schema.graphql");

#[test]
fn the_checked_in_sdl_matches_the_schema() {
    let sdl = toolhub_api::graphql::sdl();
    if std::env::var_os("TOOLHUB_UPDATE_SCHEMA").is_some() {
        std::fs::write(PATH, &sdl).expect("write docs/schema.graphql");
        return;
    }
    let checked_in = std::fs::read_to_string(PATH).unwrap_or_default();
    assert!(
        checked_in == sdl,
        "docs/schema.graphql is stale; regenerate it with \
         `TOOLHUB_UPDATE_SCHEMA=1 cargo test -p toolhub-api --test schema` \
         (or `toolhub schema > docs/schema.graphql`) and review the diff"
    );
}

#[test]
fn the_schema_never_exposes_a_secret_value() {
    let sdl = toolhub_api::graphql::sdl();
    let secret_type = sdl
        .split("\ntype Secret {")
        .nth(1)
        .and_then(|rest| rest.split("\n}").next())
        .expect("a Secret type");
    assert!(
        !secret_type
            .lines()
            .any(|l| l.trim_start().starts_with("value")),
        "{secret_type}"
    );
}
