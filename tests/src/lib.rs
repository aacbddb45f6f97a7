//! End-to-end tests of Toolhub through its HTTP and GraphQL surface, against a
//! real database. The tests arrive with the service (`toolhub serve`).
