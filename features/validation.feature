Feature: Clear errors for requests that cannot be served
  Every error is an RFC 9457 problem document that says what to fix.

  Scenario Outline: Keys must be 1-255 letters and digits
    When I <method> <path>
    Then the status is 400
    And the answer is a "invalid-key" problem saying "<reason>"

    Examples:
      | method | path            | reason                      |
      | GET    | /foo-bar        | '-' at position 3           |
      | PUT    | /foo%20bar      | ' ' at position 3           |
      | GET    | /foo%FF         | '\xff' at position 3        |
      | DELETE | /caf%C3%A9      | '\xc3' at position 3        |
      | GET    | /foo.bar/history | '.' at position 3          |

  Scenario: Keys longer than 255 characters are refused
    When I GET a key of 256 characters
    Then the status is 400
    And the answer is a "invalid-key" problem saying "256 characters long"

  Scenario: Reading or deleting a key that has no value
    When I GET /missing
    Then the status is 404
    And the answer is a "key-not-found" problem saying "has no value"
    When I DELETE /missing
    Then the status is 404
    When I GET /missing/history
    Then the history is empty

  Scenario Outline: Methods a resource does not support
    When I <method> <path>
    Then the status is 405
    And the header Allow is "<allowed>"

    Examples:
      | method | path          | allowed                        |
      | TRACE  | /foo          | DELETE,GET,HEAD,PATCH,POST,PUT |
      | DELETE | /foo/history  | GET,HEAD                       |

  Scenario: Paths that are not keys
    When I GET /foo/bar/baz
    Then the status is 404
    And the header Content-Type is "application/problem+json"
