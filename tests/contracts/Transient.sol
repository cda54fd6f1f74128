// SPDX-License-Identifier: MIT
pragma solidity ^0.8.28;

// Needs Cancun's transient storage and Shanghai's PUSH0 (solc emits it for zeros): runs on
// geth-pos (Prague from genesis), refused before sending on the Clique chain (paris).
contract Transient {
    uint256 public stored;
    event Stored(uint256 value);

    function bump(uint256 value) external {
        uint256 seen;
        assembly {
            tstore(0, value)
            seen := tload(0)
        }
        stored = seen + 1;
        emit Stored(stored);
    }
}
