//! What the engine keeps of a server's answers: a tool call's output in the
//! shape a step records, and a tool's description with its behaviour hints.

use rmcp::model::{CallToolResult, Tool};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use toolhub_domain::mcp_server::ToolInfo;

/// A successful tool call's result, in the shape the engine records as the
/// step's output:
/// `{"text": "...", "content": [...], "structured": {...} | null}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolOutput {
    /// The text items joined with `\n`: what most workflows use, without
    /// having to walk the content list.
    pub text: String,
    /// Every content item as the server sent it (text, image, audio,
    /// resource, resource link), so that nothing is lost.
    pub content: Vec<Value>,
    /// The result's `structuredContent`, or `null` when the tool sent none;
    /// tools with an output schema put their machine-readable answer here.
    pub structured: Option<Value>,
}

impl ToolOutput {
    /// The output as the JSON value a step records.
    pub fn to_json(&self) -> Value {
        let mut object = Map::new();
        object.insert("text".into(), Value::String(self.text.clone()));
        object.insert("content".into(), Value::Array(self.content.clone()));
        object.insert(
            "structured".into(),
            self.structured.clone().unwrap_or(Value::Null),
        );
        Value::Object(object)
    }

    /// Converts rmcp's result, telling whether the tool reported an error.
    pub(crate) fn from_result(result: CallToolResult) -> (Self, bool) {
        let is_error = result.is_error.unwrap_or(false);
        let text = result
            .content
            .iter()
            .filter_map(|block| block.as_text().map(|text| text.text.as_str()))
            .collect::<Vec<_>>()
            .join("\n");
        let content = result
            .content
            .iter()
            // A content block is plain data; serialising it cannot fail, and
            // if it ever did, a null keeps the item's position visible.
            .map(|block| serde_json::to_value(block).unwrap_or(Value::Null))
            .collect();
        let structured = result.structured_content.filter(|value| !value.is_null());
        (
            Self {
                text,
                content,
                structured,
            },
            is_error,
        )
    }
}

/// A tool a server advertises, with the behaviour hints from its annotations.
///
/// The hints come from the server and are not guarantees; they are meant for
/// decisions such as "may this call be retried after a timeout", never for
/// security decisions.
#[derive(Debug, Clone, PartialEq)]
pub struct McpTool {
    /// What the domain records at discovery (name, description, input schema).
    pub info: ToolInfo,
    /// A human-readable title, from the tool or its annotations.
    pub title: Option<String>,
    /// `readOnlyHint`: the tool does not change its environment. Absent means
    /// false, as the specification says.
    pub read_only: bool,
    /// `idempotentHint`: calling it again with the same arguments has no
    /// further effect. Absent means false.
    pub idempotent: bool,
    /// `destructiveHint`: the tool may destroy data (meaningful only when not
    /// read-only). Absent means true.
    pub destructive: bool,
    /// `openWorldHint`: the tool reaches outside systems. Absent means true.
    pub open_world: bool,
    /// The JSON Schema of the tool's `structuredContent`, when it declares one.
    pub output_schema: Option<Value>,
}

impl McpTool {
    /// True when the server says a repeated call cannot do harm: the tool is
    /// read-only or idempotent.
    pub fn is_safe_to_retry(&self) -> bool {
        self.read_only || self.idempotent
    }

    /// Converts rmcp's tool description, applying the hints' defaults.
    pub(crate) fn from_tool(tool: Tool) -> Self {
        let annotations = tool.annotations.as_ref();
        let hint = |pick: fn(&rmcp::model::ToolAnnotations) -> Option<bool>, default: bool| {
            annotations.and_then(pick).unwrap_or(default)
        };
        let read_only = hint(|a| a.read_only_hint, false);
        let idempotent = hint(|a| a.idempotent_hint, false);
        let destructive = hint(|a| a.destructive_hint, true);
        let open_world = hint(|a| a.open_world_hint, true);
        let title = tool
            .title
            .clone()
            .or_else(|| annotations.and_then(|a| a.title.clone()));
        Self {
            info: ToolInfo {
                name: tool.name.to_string(),
                description: tool.description.as_ref().map(|d| d.to_string()),
                input_schema: Value::Object((*tool.input_schema).clone()),
                read_only,
                idempotent,
            },
            title,
            read_only,
            idempotent,
            destructive,
            open_world,
            output_schema: tool
                .output_schema
                .as_ref()
                .map(|schema| Value::Object((**schema).clone())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn result(value: Value) -> CallToolResult {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn text_items_are_joined_with_newlines_and_every_item_is_kept() {
        let (output, is_error) = ToolOutput::from_result(result(json!({
            "content": [
                {"type": "text", "text": "first"},
                {"type": "image", "data": "aGk=", "mimeType": "image/png"},
                {"type": "text", "text": "second"}
            ]
        })));
        assert!(!is_error);
        assert_eq!(output.text, "first\nsecond");
        assert_eq!(output.content.len(), 3);
        assert_eq!(output.content[1]["type"], "image");
        assert_eq!(output.to_json()["structured"], Value::Null);
    }

    #[test]
    fn structured_content_is_recorded_under_structured() {
        let (output, _) = ToolOutput::from_result(result(json!({
            "content": [],
            "structuredContent": {"temperature": 33}
        })));
        assert_eq!(output.to_json()["structured"], json!({"temperature": 33}));
    }

    #[test]
    fn a_result_marked_as_error_is_reported_as_one() {
        let (_, is_error) = ToolOutput::from_result(result(json!({
            "content": [{"type": "text", "text": "no"}],
            "isError": true
        })));
        assert!(is_error);
    }

    #[test]
    fn missing_hints_take_the_specification_defaults() {
        let tool: Tool = serde_json::from_value(json!({
            "name": "write",
            "inputSchema": {"type": "object"}
        }))
        .unwrap();
        let tool = McpTool::from_tool(tool);
        assert!(!tool.read_only && !tool.idempotent && tool.destructive && tool.open_world);
        assert!(!tool.is_safe_to_retry());
    }
}
