//! The OpenAPI 3 document of the public API, served at [`PATH`].
//!
//! The operations come from the `#[utoipa::path]` of each public handler, registered with its route
//! (see [`crate::api::public_routes`]); this module adds the document's header and the schemas that
//! no handler type carries. `docs/openapi.json` is the checked-in copy that a test compares with what
//! the code generates, so any change to a route, a status or a schema shows up in review.

use utoipa::openapi::{InfoBuilder, OpenApi, OpenApiBuilder};

/// Where the document is served.
pub const PATH: &str = "/openapi.json";

/// One item of a `POST /items` body. Other fields are ignored. The lengths are the defaults of
/// `--max-id-bytes` and `--max-tenant-bytes` (in bytes of UTF-8).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // Only its schema is used: bodies are parsed by `items::parse`.
pub struct ItemInput {
    /// The item's id: posting the same id twice for a tenant counts it once.
    #[schema(min_length = 1, max_length = 256)]
    id: String,
    /// The tenant the item is counted for.
    #[schema(min_length = 1, max_length = 256)]
    tenant: String,
}

/// The document's header; the routes add their operations.
pub fn base() -> OpenApi {
    OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("Distributed counter")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(
                    "Counts distinct item ids per tenant, replicated on every counter with \
                     two-phase commit. Every error is `{\"status\":\"failed\",\"error\":\"...\"}`; \
                     unknown paths get 404 and wrong methods 405 in the same shape.",
                ))
                .build(),
        )
        .build()
}

/// The whole document, as served.
pub fn document() -> OpenApi {
    crate::api::public_routes().into_openapi()
}
