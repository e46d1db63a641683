// Python's `json.dumps(value, sort_keys=True)` and `repr(float)`, byte for byte: the manifest's own content
// hash (runtime/manifest.py:_content_sha256) is the SHA-256 of that text, so the native reader must write
// the same bytes to check it.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

namespace npgmf {

// repr(x) of a finite double: the shortest digits that round-trip, fixed notation for decimal exponents
// -4 <= e < 16, else d.ddde+XX (two exponent digits at least), and ".0" on integral values.
std::string python_float_repr(double value);

// json.dumps(value, sort_keys=True): ", " and ": " separators, ASCII only (\uXXXX escapes, surrogate
// pairs above the BMP).
std::string python_json_dumps(const nlohmann::json &value);

}  // namespace npgmf
