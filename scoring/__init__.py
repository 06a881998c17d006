"""Pure scoring functions: filters, loss scores, OpenSkill, weights, aggregation. No I/O."""
