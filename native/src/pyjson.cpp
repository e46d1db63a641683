#include "pyjson.h"

#include <charconv>
#include <cmath>
#include <cstdio>
#include <stdexcept>
#include <system_error>

namespace npgmf {

std::string python_float_repr(double value) {
    if (!std::isfinite(value)) throw std::invalid_argument("a JSON number must be finite");
    char buffer[64];
    auto [end, ec] = std::to_chars(buffer, buffer + sizeof buffer, value, std::chars_format::scientific);
    if (ec != std::errc()) throw std::runtime_error("cannot format a number");
    std::string text(buffer, end);  // [-]d[.ddd]e[+-]XX, shortest round-trip digits
    std::string sign;
    if (text[0] == '-') {
        sign = "-";
        text.erase(0, 1);
    }
    const size_t e = text.find('e');
    std::string digits = text.substr(0, e);
    const int exponent = std::stoi(text.substr(e + 1));
    if (digits.size() > 1) digits.erase(1, 1);  // drop the '.'
    const int decimal_point = exponent + 1;      // digits before the point
    std::string out;
    if (-4 < decimal_point && decimal_point <= 16) {
        if (decimal_point <= 0) {
            out = "0." + std::string(static_cast<size_t>(-decimal_point), '0') + digits;
        } else if (static_cast<size_t>(decimal_point) >= digits.size()) {
            out = digits + std::string(static_cast<size_t>(decimal_point) - digits.size(), '0') + ".0";
        } else {
            out = digits.substr(0, static_cast<size_t>(decimal_point)) + "." +
                  digits.substr(static_cast<size_t>(decimal_point));
        }
    } else {
        out = digits.substr(0, 1);
        if (digits.size() > 1) out += "." + digits.substr(1);
        char exp[32];
        std::snprintf(exp, sizeof exp, "e%c%02d", exponent < 0 ? '-' : '+', std::abs(exponent));
        out += exp;
    }
    return sign + out;
}

namespace {

void append_escaped(std::string &out, const std::string &text) {
    out += '"';
    size_t i = 0;
    auto hex = [&out](unsigned unit) {
        char buffer[16];
        std::snprintf(buffer, sizeof buffer, "\\u%04x", unit);
        out += buffer;
    };
    while (i < text.size()) {
        const auto byte = static_cast<unsigned char>(text[i]);
        if (byte < 0x80) {
            switch (byte) {
                case '"': out += "\\\""; break;
                case '\\': out += "\\\\"; break;
                case '\n': out += "\\n"; break;
                case '\r': out += "\\r"; break;
                case '\t': out += "\\t"; break;
                case '\b': out += "\\b"; break;
                case '\f': out += "\\f"; break;
                default:
                    if (byte < 0x20) hex(byte);
                    else out += static_cast<char>(byte);
            }
            ++i;
            continue;
        }
        // nlohmann's parser has already checked the UTF-8, so the sequence is well formed.
        const int length = byte >= 0xf0 ? 4 : byte >= 0xe0 ? 3 : 2;
        unsigned code = byte & (length == 4 ? 0x07u : length == 3 ? 0x0fu : 0x1fu);
        for (int k = 1; k < length && i + static_cast<size_t>(k) < text.size(); ++k)
            code = (code << 6) | (static_cast<unsigned char>(text[i + static_cast<size_t>(k)]) & 0x3fu);
        if (code >= 0x10000) {
            code -= 0x10000;
            hex(0xd800 + (code >> 10));
            hex(0xdc00 + (code & 0x3ff));
        } else {
            hex(code);
        }
        i += static_cast<size_t>(length);
    }
    out += '"';
}

void dump(std::string &out, const nlohmann::json &value) {
    switch (value.type()) {
        case nlohmann::json::value_t::object: {
            out += '{';
            bool first = true;
            for (const auto &[key, item] : value.items()) {  // std::map: sorted by UTF-8 bytes = code points
                if (!first) out += ", ";
                first = false;
                append_escaped(out, key);
                out += ": ";
                dump(out, item);
            }
            out += '}';
            break;
        }
        case nlohmann::json::value_t::array: {
            out += '[';
            for (size_t k = 0; k < value.size(); ++k) {
                if (k) out += ", ";
                dump(out, value[k]);
            }
            out += ']';
            break;
        }
        case nlohmann::json::value_t::string: append_escaped(out, value.get_ref<const std::string &>()); break;
        case nlohmann::json::value_t::boolean: out += value.get<bool>() ? "true" : "false"; break;
        case nlohmann::json::value_t::null: out += "null"; break;
        case nlohmann::json::value_t::number_integer: out += std::to_string(value.get<int64_t>()); break;
        case nlohmann::json::value_t::number_unsigned: out += std::to_string(value.get<uint64_t>()); break;
        case nlohmann::json::value_t::number_float: out += python_float_repr(value.get<double>()); break;
        default: throw std::invalid_argument("a value JSON cannot hold");
    }
}

}  // namespace

std::string python_json_dumps(const nlohmann::json &value) {
    std::string out;
    dump(out, value);
    return out;
}

}  // namespace npgmf
