//! The graph checks of a definition (steps 7 to 9 of the check order: an
//! entry node, no cycle, template references to ancestors only) and the
//! graph algorithms they and the engine share.

use std::collections::{BTreeMap, BTreeSet};

use super::condition::referenced_nodes;
use super::{DefinitionError, NodeKind, WorkflowDefinition};
use crate::common::{template_expressions, TemplateReference};
use crate::secret::is_valid_secret_name;

impl WorkflowDefinition {
    /// The graph as adjacency lists of node indices.
    pub(super) fn graph(&self) -> Graph {
        let index: BTreeMap<&str, usize> = self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.id.as_str(), i))
            .collect();
        let mut graph = Graph {
            successors: vec![Vec::new(); self.nodes.len()],
            predecessors: vec![Vec::new(); self.nodes.len()],
        };
        for edge in &self.edges {
            if let (Some(&from), Some(&to)) =
                (index.get(edge.from.as_str()), index.get(edge.to.as_str()))
            {
                graph.successors[from].push(to);
                graph.predecessors[to].push(from);
            }
        }
        graph
    }

    /// Steps 7 to 9 of the check order: entry node, cycles, references.
    pub(super) fn validate_graph(&self) -> Result<(), DefinitionError> {
        let graph = self.graph();
        if !graph.predecessors.iter().any(Vec::is_empty) {
            return Err(DefinitionError::NoEntryNode);
        }
        let order = topological_indices(&graph);
        if order.len() < self.nodes.len() {
            return Err(DefinitionError::Cycle {
                path: self.find_cycle(&graph, &order),
            });
        }
        // A node's ancestors are its predecessors and their ancestors;
        // visiting in topological order means predecessors are complete.
        let mut ancestors: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); self.nodes.len()];
        for &node in &order {
            let mut set = BTreeSet::new();
            for &pred in &graph.predecessors[node] {
                set.insert(pred);
                set.extend(ancestors[pred].iter().copied());
            }
            ancestors[node] = set;
        }
        let index: BTreeMap<&str, usize> = self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.id.as_str(), i))
            .collect();
        for (i, node) in self.nodes.iter().enumerate() {
            if let NodeKind::Condition { expression } = &node.kind {
                for referenced in referenced_nodes(expression) {
                    if !index
                        .get(referenced.as_str())
                        .is_some_and(|r| ancestors[i].contains(r))
                    {
                        return Err(DefinitionError::UnknownNodeReference {
                            id: node.id.to_string(),
                            referenced,
                        });
                    }
                }
            }
            node.kind.visit_strings(&mut |text| {
                for template in template_expressions(text) {
                    match template.reference() {
                        TemplateReference::Secret { name } if !is_valid_secret_name(name) => {
                            return Err(DefinitionError::InvalidSecretReference {
                                id: node.id.to_string(),
                                reference: name.to_string(),
                            });
                        }
                        TemplateReference::Node {
                            node: referenced, ..
                        } if !index
                            .get(referenced)
                            .is_some_and(|r| ancestors[i].contains(r)) =>
                        {
                            return Err(DefinitionError::UnknownNodeReference {
                                id: node.id.to_string(),
                                referenced: referenced.to_string(),
                            });
                        }
                        _ => {}
                    }
                }
                Ok(())
            })?;
        }
        Ok(())
    }

    /// Finds one cycle among the nodes a topological sort could not reach.
    ///
    /// Each such node has a predecessor that is also unreached, so walking
    /// backwards from the first one (always through its first such
    /// predecessor, in edge order) must revisit a node; the walk between the
    /// two visits, reversed, is a cycle.
    fn find_cycle(&self, graph: &Graph, sorted: &[usize]) -> Vec<String> {
        let sorted: BTreeSet<usize> = sorted.iter().copied().collect();
        let Some(start) = (0..self.nodes.len()).find(|i| !sorted.contains(i)) else {
            return Vec::new();
        };
        let mut walk = vec![start];
        let mut current = start;
        loop {
            let Some(&pred) = graph.predecessors[current]
                .iter()
                .find(|p| !sorted.contains(p))
            else {
                return Vec::new();
            };
            if let Some(seen) = walk.iter().position(|&n| n == pred) {
                // The walk went against the edges; reversed, it follows them.
                let mut cycle: Vec<usize> = walk[seen..].to_vec();
                cycle.reverse();
                // Start at the node given first, and close the loop by
                // repeating it, so the same graph always reports the same path.
                let first = (0..cycle.len()).min_by_key(|&k| cycle[k]).unwrap_or(0);
                cycle.rotate_left(first);
                cycle.extend(cycle.first().copied());
                return cycle
                    .into_iter()
                    .map(|i| self.nodes[i].id.to_string())
                    .collect();
            }
            walk.push(pred);
            current = pred;
        }
    }
}

/// Adjacency lists over node indices, edges in the order given.
pub(super) struct Graph {
    /// For each node, the nodes its edges lead to.
    successors: Vec<Vec<usize>>,
    /// For each node, the nodes whose edges lead to it.
    predecessors: Vec<Vec<usize>>,
}

/// Kahn's algorithm, always taking the ready node given first. Returns fewer
/// indices than there are nodes when the graph has a cycle.
pub(super) fn topological_indices(graph: &Graph) -> Vec<usize> {
    let mut in_degree: Vec<usize> = graph.predecessors.iter().map(Vec::len).collect();
    let mut ready: BTreeSet<usize> = (0..in_degree.len())
        .filter(|&i| in_degree[i] == 0)
        .collect();
    let mut order = Vec::with_capacity(in_degree.len());
    while let Some(node) = ready.pop_first() {
        order.push(node);
        for &next in &graph.successors[node] {
            in_degree[next] -= 1;
            if in_degree[next] == 0 {
                ready.insert(next);
            }
        }
    }
    order
}
