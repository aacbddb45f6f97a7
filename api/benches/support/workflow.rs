//! The workflow definition the list and mutation benchmarks store.

use serde_json::{json, Value};

/// A definition of about 2.2 KB: an HTTP call, a condition, two MCP tool
/// calls with their arguments, a transform and a delay.
pub fn definition(i: u64) -> Value {
    json!({
        "nodes": [
            {"id": "fetch", "type": "http", "params": {"method": "GET",
                "url": format!("https://api.example.com/v2/customers/{i}/orders?status=open&limit=100"),
                "headers": {"accept": "application/json", "x-request-source": "toolhub-workflow"}}},
            {"id": "check", "type": "condition", "params": {"expression": "size(nodes.fetch.body.items) > 0 && nodes.fetch.status == 200"}},
            {"id": "summarise", "type": "mcp_tool", "params": {"server": "everything", "tool": "echo",
                "arguments": {"message": "{{nodes.fetch.body.items}} — summarise the open orders of this customer, grouped by warehouse and carrier, with totals per currency and the oldest order first, and flag every order that waits for a payment or a customs release"}}},
            {"id": "notify", "type": "mcp_tool", "params": {"server": "everything", "tool": "add",
                "arguments": {"a": 1, "b": 2}}},
            {"id": "shape", "type": "transform", "params": {"template": {
                "customer": i, "orders": "{{nodes.fetch.body.items}}", "summary": "{{nodes.summarise.content}}",
                "generated_by": "nightly order digest", "channel": "#orders-digest",
                "footer": "This digest lists every open order of the customer as of the run's start; orders closed since are not shown.",
                "legal": "Order data is processed under the customer agreement, section 7.2: it is kept in the region it was collected in, shared only with the carriers named on each order, and deleted ninety days after the order closes, unless a dispute or a legal hold keeps it longer; questions go to the data protection office."}}},
            {"id": "pause", "type": "delay", "params": {"milliseconds": 250}},
            {"id": "audit", "type": "http", "params": {"method": "POST",
                "url": "https://audit.example.com/v1/records",
                "headers": {"content-type": "application/json"},
                "body": {"kind": "order-digest", "customer": i, "summary": "{{nodes.shape}}", "note": "recorded by the nightly order digest workflow for the compliance archive, kept for seven years"}}}
        ],
        "edges": [
            {"from": "fetch", "to": "check"},
            {"from": "check", "to": "summarise", "branch": "true"},
            {"from": "summarise", "to": "notify"},
            {"from": "notify", "to": "shape"},
            {"from": "shape", "to": "pause"},
            {"from": "pause", "to": "audit"}
        ]
    })
}
