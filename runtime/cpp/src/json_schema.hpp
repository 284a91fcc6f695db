// JSON Schema validation for the keywords runtime/manifest.schema.json uses (its description lists
// them), walking the schema generically; the same rules and messages as restr.runtime.schema.
#pragma once
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

namespace restr_impl {

// The first way `value` breaks `schema` as "field.path: what is wrong", or nothing when valid.
// Throws std::invalid_argument for a schema keyword it does not implement (never silently skipped).
std::optional<std::string> first_schema_error(const nlohmann::ordered_json& schema, const nlohmann::ordered_json& value);

// manifest.schema.json, embedded at build time from the one file in runtime/.
const nlohmann::ordered_json& manifest_schema();

}  // namespace restr_impl
